"""``fedhe provision``: a project CA and one ready-to-use kit per participant (mutual TLS).

Layout under ``--out DIR``::

    DIR/project.yaml         the project as provisioned (``--add-site`` appends to it)
    DIR/ca/ca.crt, ca.key    the project CA (key 0600) -- never copied into a kit
    DIR/kits/<id>/           <id>.crt (CN = id, SAN = hosts), <id>.key (0600), ca.crt, config

Identities come from the certificates: every config lists ids and roles, no tokens.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedhe_common.config.load import load_yaml
from fedhe_common.config.models import ClientConfig, KeyAuthConfig, PeerSection, ServerConfig
from fedhe_common.errors import ConfigError
from fedhe_common.pki import CertificateAuthority, issue, load_ca, new_ca, write_ca

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceEntry(_Model):
    """The key authority or the server: its id (certificate CN), host names and port."""

    id: str = Field(pattern=ID_PATTERN)
    hosts: list[str] = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    listen_host: str = "0.0.0.0"


class AdminEntry(_Model):
    """An administrator (certificate CN = id)."""

    id: str = Field(pattern=ID_PATTERN)


class SiteEntry(_Model):
    """A client site: its client id (certificate CN) and host names."""

    id: str = Field(pattern=ID_PATTERN)
    hosts: list[str] = Field(default_factory=list)


class ProjectConfig(_Model):
    """``project.yaml``: who takes part and where they run."""

    name: str = Field(default="fedhe", pattern=ID_PATTERN)
    validity_days: int = Field(default=365, ge=1, le=3650)
    keyauth: ServiceEntry
    server: ServiceEntry
    admins: list[AdminEntry] = Field(default_factory=list)
    sites: list[SiteEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> ProjectConfig:
        ids = [self.keyauth.id, self.server.id, *(a.id for a in self.admins)]
        ids += [s.id for s in self.sites]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"participant ids must be unique: {', '.join(dupes)}")
        return self


def _address(entry: ServiceEntry) -> str:
    return f"{entry.hosts[0]}:{entry.port}"


class _Kits:
    """Writes kits under ``out/kits`` signed by ``ca``."""

    def __init__(self, project: ProjectConfig, out: Path, ca: CertificateAuthority) -> None:
        self.project, self.out, self.ca = project, out.resolve(), ca
        self.validity = dt.timedelta(days=project.validity_days)

    def kit(self, name: str) -> Path:
        return self.out / "kits" / name

    def credentials(self, name: str, hosts: list[str]) -> dict[str, str]:
        """Issue ``name``'s certificate once (kept on later runs); paths of cert, key, CA."""
        kit = self.kit(name)
        crt, key = kit / f"{name}.crt", kit / f"{name}.key"
        if not crt.exists():
            issue(self.ca, name, hosts, crt, key, self.validity)
        (kit / "ca.crt").write_bytes((self.out / "ca" / "ca.crt").read_bytes())
        return {"cert_file": str(crt), "key_file": str(key), "ca_file": str(kit / "ca.crt")}

    def peer(self, name: str, target: ServiceEntry) -> dict[str, Any]:
        creds = self.credentials(name, [])
        return {"address": _address(target), **creds}

    def write(self, name: str, filename: str, doc: dict[str, Any], model: type[BaseModel]) -> None:
        model.model_validate(doc)  # a kit never holds a config its service would refuse
        (self.kit(name) / filename).write_text(yaml.safe_dump(doc, sort_keys=False))

    def identities(self, with_server: bool) -> list[dict[str, str]]:
        p = self.project
        ids = [{"id": p.server.id, "role": "server"}] if with_server else []
        ids += [{"id": a.id, "role": "admin"} for a in p.admins]
        return ids + [{"id": s.id, "role": "client"} for s in p.sites]

    def write_all(self) -> None:
        p = self.project
        ka, srv = p.keyauth, p.server
        self.write(
            ka.id,
            "keyauth.yaml",
            {
                "listen": f"{ka.listen_host}:{ka.port}",
                "tls": self.credentials(ka.id, ka.hosts),
                "state_dir": str(self.kit(ka.id) / "state"),
                "identities": self.identities(with_server=True),
            },
            KeyAuthConfig,
        )
        srv_creds = self.credentials(srv.id, srv.hosts)
        self.write(
            srv.id,
            "server.yaml",
            {
                "listen": f"{srv.listen_host}:{srv.port}",
                "tls": srv_creds,
                "state_dir": str(self.kit(srv.id) / "state"),
                "keyauth": {"address": _address(ka), **srv_creds},
                "identities": self.identities(with_server=False),
            },
            ServerConfig,
        )
        for admin in p.admins:
            self.write(admin.id, "admin.yaml", self.peer(admin.id, srv), PeerSection)
        for index, site in enumerate(p.sites):
            creds = self.credentials(site.id, site.hosts)
            doc = {
                "client_id": site.id,
                "server": {"address": _address(srv), **creds},
                "keyauth": {"address": _address(ka), **creds},
                "partition": {"index": index, "count": len(p.sites)},
                "state_dir": str(self.kit(site.id) / "state"),
            }
            self.write(site.id, "client.yaml", doc, ClientConfig)


def provision(project: ProjectConfig, out: Path) -> Path:
    """Create the CA and every kit; refuse a folder that already holds a CA."""
    if (out / "ca" / "ca.key").exists():
        raise ConfigError(f"{out}: already provisioned (use --add-site to add a site)")
    ca = new_ca(f"FedHE {project.name} CA", dt.timedelta(days=project.validity_days))
    write_ca(ca, out / "ca")
    (out / "project.yaml").write_text(yaml.safe_dump(project.model_dump(), sort_keys=False))
    _Kits(project, out, ca).write_all()
    return out / "kits"


def add_site(out: Path, site: SiteEntry) -> ProjectConfig:
    """Add one site with the same CA; rewrite every config (new identity lists)."""
    project = load_yaml(out / "project.yaml", ProjectConfig)
    doc = project.model_dump()
    doc["sites"].append(site.model_dump())
    try:
        project = ProjectConfig.model_validate(doc)
    except ValueError as exc:
        raise ConfigError(f"cannot add site {site.id!r}: {exc}") from None
    _Kits(project, out, load_ca(out / "ca")).write_all()
    (out / "project.yaml").write_text(yaml.safe_dump(project.model_dump(), sort_keys=False))
    return project


@click.command("provision")
@click.argument("project_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--add-site", "site_id", help="add one site to an already provisioned --out")
@click.option("--host", "hosts", multiple=True, help="the added site's host name(s)")
def provision_cmd(project_file: Path, out: Path, site_id: str | None, hosts: tuple[str]) -> None:
    """Write a project CA (OUT/ca) and one kit per participant (OUT/kits/<id>)."""
    if site_id is None:
        if hosts:
            raise click.UsageError("--host goes with --add-site")
        kits = provision(load_yaml(project_file, ProjectConfig), out)
        click.echo(f"CA in {out / 'ca'} (keep ca.key offline); kits in {kits}")
        return
    try:
        site = SiteEntry(id=site_id, hosts=list(hosts))
    except ValueError as exc:
        raise click.UsageError(f"--add-site: {exc}") from None
    add_site(out, site)
    click.echo(
        f"kit {out / 'kits' / site_id}; updated identities in the key authority's and the "
        "server's configs: copy them over and restart both"
    )
