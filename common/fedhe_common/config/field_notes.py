"""Descriptions for config fields that carry no comment in :mod:`.models`.

Keyed by ``ModelClass.field``; a test checks every key names a real field, so an entry
cannot outlive its field. A ``Field(description=...)`` or a comment above the field in
models.py wins over an entry here.
"""

from __future__ import annotations

NOTES: dict[str, str] = {
    # job
    "JobConfig.version": "File format version; only 1 exists.",
    "JobConfig.job": "The job's name, length and seed.",
    "JobConfig.participants": "Who takes part and when a round closes.",
    "JobConfig.encryption": "How updates travel: CKKS ciphertexts or plaintext.",
    "JobConfig.model": "The built-in model from the client's zoo.",
    "JobConfig.data": "The built-in data set and how it is split across clients.",
    "JobConfig.training": "Local training on each client per round.",
    "JobSection.name": "Job id: 1-64 letters, digits, `_`, `.`, `-`.",
    "JobSection.rounds": "Federated rounds to run.",
    "JobSection.seed": "Seed for model initialisation, data split and sampling.",
    "ParticipantsSection.min_clients": "Uploads needed before a round can close.",
    "ParticipantsSection.round_timeout_s": "A round with fewer than min_clients uploads "
    "after this many seconds fails.",
    "ParticipantsSection.wait_after_min_s": "Seconds to wait for more uploads once "
    "min_clients have arrived.",
    "ParticipantsSection.expected_clients": "Close at once when this many uploads arrived "
    "(null: wait_after_min_s decides).",
    "ParticipantsSection.heartbeat_interval_s": "How often clients report they are alive.",
    "EncryptionSection.mode": "`ckks`: encrypted aggregation; `none`: plaintext FedAvg "
    "(baseline).",
    "EncryptionSection.preset": "CKKS parameter preset (see docs/crypto.md).",
    "EncryptionSection.clip_bound": "Clip each update value to +-clip_bound before "
    "encryption (null: training.max_update_abs).",
    "KeysSection.mode": "`single`: one shared key held by the key authority; "
    "`threshold`: t of n clients must cooperate to decrypt.",
    "KeysSection.parties": "Threshold keys: number of key-share holders (n).",
    "KeysSection.threshold": "Threshold keys: shares needed to decrypt (t, at least 2).",
    "KeysSection.preset": "Threshold keys: CKKS preset with noise flooding.",
    "SelectiveSection.ratio": "Fraction of coordinates encrypted, the most sensitive first.",
    "SelectiveSection.include_first_last": "Always encrypt the first and last layers.",
    "SelectiveSection.include_layers": "Parameter names always encrypted.",
    "SelectiveSection.sensitivity": "How sensitivity is measured: exact gradients, "
    "true-class gradients, or random (baseline).",
    "SelectiveSection.samples": "Local samples used to measure sensitivity.",
    "DPSection.mechanism": "Noise added to the plaintext part of updates.",
    "DPSection.scale": "Noise scale (Laplace b or Gaussian sigma).",
    "ModelSection.name": "Model from the client's zoo.",
    "ModelSection.hidden": "Hidden width (mlp).",
    "ModelSection.init": "`dlg`: initialisation used by the privacy audit.",
    "DataSection.dataset": "Built-in data set, or `npz` (arrays x, y at path).",
    "DataSection.path": "The .npz file (dataset npz).",
    "DataSection.partition": "How samples are split across clients.",
    "DataSection.dirichlet_alpha": "Dirichlet concentration (smaller: more skewed labels).",
    "DataSection.test_fraction": "Share of each client's samples held out for testing.",
    "TaskSection.name": "Registered task name (never a module path).",
    "TaskSection.params": "The task's hyperparameters.",
    "TrainingSection.local_epochs": "Epochs over the local data per round.",
    "TrainingSection.batch_size": "Mini-batch size.",
    "TrainingSection.lr": "Learning rate.",
    "TrainingSection.momentum": "SGD momentum.",
    "TrainingSection.max_update_abs": "Largest |value| of an update; larger values are "
    "refused.",
    "TrainingSection.optimizer": "Local optimizer.",
    "TrainingSection.weight_decay": "Weight decay.",
    "TrainingSection.lr_min": "Cosine schedule: final learning rate.",
    "TrainingSection.lr_step_rounds": "Step schedule: rounds between steps.",
    "TrainingSection.lr_gamma": "Step schedule: factor per step.",
    "PeftSection.method": "Adapter method.",
    "PeftSection.r": "LoRA rank.",
    "PeftSection.alpha": "LoRA scaling alpha.",
    "PeftSection.dropout": "LoRA dropout.",
    "PeftSection.base_sha256": "Pins the frozen base model's sha256.",
    # services
    "_Listener.listen": "host:port to listen on.",
    "_Listener.insecure": "No TLS; allowed only on a loopback listen address.",
    "_Listener.tls": "Certificate and key; with ca_file, callers need a client certificate.",
    "TLSSection.cert_file": "PEM certificate of this service.",
    "TLSSection.key_file": "PEM private key of this service.",
    "TLSSection.ca_file": "CA certificate: require client certificates it signed "
    "(mutual TLS).",
    "ServerConfig.version": "File format version; only 1 exists.",
    "ServerConfig.state_dir": "Where the server keeps its SQLite state and uploads.",
    "ServerConfig.keyauth": "How the server reaches the key authority.",
    "ServerConfig.identities": "Who may call: ids, roles, token hashes.",
    "ServerConfig.metrics_port": "Prometheus /metrics on 127.0.0.1 (0: off).",
    "KeyAuthConfig.version": "File format version; only 1 exists.",
    "KeyAuthConfig.state_dir": "Where the key authority keeps its keys.",
    "KeyAuthConfig.identities": "Who may call: ids, roles, token hashes.",
    "IdentitySection.id": "The caller's id (client_id for clients; CN of its certificate).",
    "IdentitySection.role": "What it may do.",
    "PeerSection.address": "host:port of the service.",
    "PeerSection.ca_file": "CA certificate that signed the service's certificate.",
    "PeerSection.key_file": "This side's private key (with cert_file).",
    "PeerSection.insecure": "No TLS; allowed only to a loopback address.",
    "ClientConfig.version": "File format version; only 1 exists.",
    "ClientConfig.client_id": "This site's id (its identity at server and key authority).",
    "ClientConfig.server": "How to reach the aggregation server.",
    "ClientConfig.keyauth": "How to reach the key authority.",
    "ClientConfig.job_id": "The job to join (--once); null: the only running job.",
    "ClientConfig.partition": "Which share of a built-in data set this site trains on.",
    "ClientConfig.device": "Torch device; `auto`: CUDA when available.",
    "ClientConfig.export_dir": "Also write each finished job's model here.",
    "ClientConfig.progress": "Show progress bars.",
    "ClientConfig.reconnect_max_s": "Long-lived agent: cap of the reconnect backoff (s).",
    "ClientConfig.data": "This site's own data (null: the job's built-in data set).",
    "PartitionSection.index": "This site's share (0-based).",
    "PartitionSection.count": "Number of shares.",
    "PartitionSection.num_samples": "Use at most this many samples of the share.",
    "SiteDataSection.format": "File format of the site's data.",
    "SiteDataSection.path": "File or folder with the data.",
    "SiteDataSection.val_fraction": "Share held out for validation without val_path.",
    "SiteDataSection.split_seed": "Seed of that split.",
    "SiteDataSection.channels": "Image channels (1 or 3).",
    "SiteDataSection.feature_columns": "Tables: feature columns (null: every other "
    "numeric column).",
    "SiteDataSection.pad_id": "tokens: padding token id.",
}
