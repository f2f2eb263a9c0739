"""One client process of the memory benchmark of ``fedhe bench round`` (issue 12).

``python -m fedhe_cli.bench.round_client --model NAME --out DIR --index I --config CFG``:
builds the zoo model at its reference shape (seeded, then offset per client so the
clients differ), flattens it, encrypts and uploads it pipelined (producer thread,
spool file), waits for the round to publish, downloads and decrypts the aggregate as
it streams, and writes its vector, the global model and a JSON report (bytes, peak
RSS, ``VmHWM``) under DIR. It does not train: the benchmark measures the
services' memory and bytes at the model's size, not the training.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedhe_client.connection import ServerConnection
from fedhe_client.keymodes import KeyMode, key_mode
from fedhe_client.peft_support import apply_peft, travelling_state, with_base
from fedhe_client.update_codec import StreamingDecoder, encode_update
from fedhe_client.zoo import zoo_model
from fedhe_common._proto.fedhe.aggregation.v1 import aggregation_pb2 as pb
from fedhe_common.config.load import load_yaml, parse_yaml
from fedhe_common.config.models import ClientConfig, DPSection, JobConfig, PeftSection
from fedhe_common.mlbridge.flatten import flatten

PUBLISHED_WAIT_S = 7200


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak resident set in MiB: ``VmHWM`` of ``/proc/<pid>/status``.

    Not ``ru_maxrss``: Linux carries the forking parent's image into a child's
    ``ru_maxrss`` across ``exec``, so small children would report the parent's size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def client_vector(model_name: str, index: int, peft: str | None = None) -> tuple[np.ndarray, str]:
    """The model's flat float64 vector plus ``0.001 * (index + 1)``, and its layout id.

    With ``peft="lora"`` (r=8 on the model's default targets) only the adapters and the
    head travel, as in a LoRA job; the frozen base's sha256 is in the layout id."""
    spec = zoo_model(model_name)
    torch.manual_seed(0)
    model = spec.factory(spec.reference_shape, spec.reference_classes, 64)
    if peft == "lora":
        model, info = apply_peft(model, PeftSection(method="lora"))
        vector, manifest = flatten(travelling_state(model, info))
        manifest = with_base(manifest, info)
    else:
        vector, manifest = flatten(model.state_dict())
    del model
    vector += 0.001 * (index + 1)
    return vector, manifest.layout_id


def run(
    config: ClientConfig,
    model_name: str,
    index: int,
    encrypted: bool,
    out: Path,
    peft: str | None = None,
) -> None:
    """One round of this client; writes ``client-<i>.json``, ``vec-<i>.npy``, ``global-<i>.npy``."""
    t0 = time.perf_counter()
    conn = ServerConnection(config.server)
    reg = conn.register(config.client_id, None)
    job_id, vpc = reg.job_id, reg.values_per_chunk
    job = parse_yaml(reg.job_yaml, JobConfig, f"job {job_id}")
    mode: KeyMode = key_mode(config, job_id, job, bytes(reg.context_fingerprint))
    if mode.encrypts != encrypted:
        raise RuntimeError(f"job {job_id} encryption does not match this bench round")
    vector, layout_id = client_vector(model_name, index, peft)
    np.save(out / f"vec-{index}.npy", vector, allow_pickle=False)
    weight = index + 1
    update = encode_update(vector, mode, None, vpc, np.inf, DPSection(), pipelined=True)
    manifest = pb.UploadManifest(
        job_id=job_id,
        round=1,
        client_id=config.client_id,
        layout_id=layout_id,
        context_fingerprint=mode.fingerprint,
        ciphertext_chunks=update.ct_plan.count,
        plaintext_chunks=update.pt_plan.count,
        num_values=vector.size,
        sample_count=weight,
    )
    num_values = int(vector.size)
    del vector
    t_up = time.perf_counter()
    conn.upload(manifest, update)
    upload_s = time.perf_counter() - t_up
    update.close()
    deadline = time.monotonic() + PUBLISHED_WAIT_S
    while not any(
        r.round == 1 and r.state == pb.ROUND_STATE_PUBLISHED
        for r in conn.job_status(job_id).history
    ):
        if time.monotonic() > deadline:
            raise SystemExit("round 1 was not published in time")
        time.sleep(0.5)
    t_down = time.perf_counter()
    decoder = StreamingDecoder(mode, None, vpc)
    header, _ = conn.download(job_id, 1, sink=decoder)
    result = decoder.result()
    result /= header.weight_sum
    download_s = time.perf_counter() - t_down
    np.save(out / f"global-{index}.npy", result, allow_pickle=False)
    report = {
        "num_values": num_values,
        "weight": weight,
        "upload_bytes": conn.bytes_sent,
        "download_bytes": conn.bytes_received,
        "upload_s": round(upload_s, 2),
        "download_decrypt_s": round(download_s, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    (out / f"client-{index}.json").write_text(json.dumps(report))
    conn.close()


def main(argv: list[str]) -> None:
    """Parse the arguments (``--config`` last, as the cluster appends it) and run."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--peft", choices=["lora"], default=None)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    config = load_yaml(args.config, ClientConfig)
    torch.set_num_threads(1)
    run(config, args.model, args.index, not args.plain, args.out, args.peft)


if __name__ == "__main__":
    main(sys.argv[1:])
