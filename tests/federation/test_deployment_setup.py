"""What a deployment checks before anything runs: certificates, the app bundle, the config keys,
and the one-line errors for a server that cannot be reached or verified (no federation needed)."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography import x509

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from flip.errors import FlipError
from flip.federation.deployment.app_bundle import COMPONENTS, RUN_CONFIG, build_fab, check_fab
from flip.federation.deployment.certs import (
    check_server_certificate,
    load_site_public_key,
    write_certificates,
)
from flip.federation.deployment.control import probe_superlink
from tests.federation.deployment_helpers import REPO, environment, free_port, new_tag


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    write_certificates(folder, ["flip.example.org"], ["site-1"])
    return folder


def test_certs_hold_the_names_sites_use_and_loopback(certs):
    server = x509.load_pem_x509_certificate((certs / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"flip.example.org", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    check_server_certificate(certs / "server.pem", certs / "server.key", certs / "ca.pem", ["flip.example.org"])
    with pytest.raises(FlipError, match=r"holds the names .*, not other\.example\.org"):
        check_server_certificate(certs / "server.pem", certs / "server.key", certs / "ca.pem", ["other.example.org"])
    assert load_site_public_key(certs / "sites" / "site-1.pub").curve.name == "secp384r1"
    assert (certs / "sites" / "site-1.key").stat().st_mode & 0o077 == 0  # private keys stay private


def test_a_server_certificate_from_another_ca_is_refused(certs, tmp_path):
    other = write_certificates(tmp_path / "other", [], []).folder
    with pytest.raises(FlipError, match=r"is not signed by ca_certificate"):
        check_server_certificate(other / "server.pem", other / "server.key", certs / "ca.pem", [])
    with pytest.raises(FlipError, match="already issued there"):
        write_certificates(certs, [], [])


def test_the_app_bundle_holds_no_code_and_matches_pyproject():
    fab = build_fab()
    assert set(zipfile.ZipFile(io.BytesIO(fab)).namelist()) == {"pyproject.toml", ".info/CONTENT"}
    check_fab(fab)
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert declared["components"] == COMPONENTS and declared["config"] == RUN_CONFIG


def test_a_bundle_that_carries_code_or_another_client_app_is_refused():
    from flwr.cli.build import build_fab_from_files
    import tomli_w

    from flip.federation.deployment.app_bundle import app_pyproject

    config = app_pyproject()
    with_code, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(config).encode(), "evil.py": b"import os\n"})
    with pytest.raises(FlipError, match=r"carries files \(evil\.py\): a site only runs the flip installed on it"):
        check_fab(with_code)
    config["tool"]["flwr"]["app"]["components"]["clientapp"] = "evil:app"
    other, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(config).encode()})
    with pytest.raises(FlipError, match=r"asks for ClientApp 'evil:app'"):
        check_fab(other)
    config = app_pyproject()
    config["tool"]["flwr"]["app"]["components"]["serverapp"] = "os:system"
    other, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(config).encode()})
    with pytest.raises(FlipError, match=r"asks for ServerApp 'os:system'"):
        check_fab(other)


def test_an_unreachable_or_unverified_server_is_named_in_one_line(certs, tmp_path):
    port = free_port()
    with pytest.raises(FlipError, match=rf"cannot reach the SuperLink at 127\.0\.0\.1:{port}: connection refused"):
        probe_superlink(f"127.0.0.1:{port}", certs / "ca.pem")
    with pytest.raises(FlipError, match=r"unknown host"):
        probe_superlink("no-such-host.invalid:9092", certs / "ca.pem")


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flip.cli", *args], cwd=cwd, env=environment(new_tag()), capture_output=True, text=True, timeout=120)


def test_flip_run_against_a_server_that_is_not_there_fails_in_one_line(certs, tmp_path):
    missing = _cli(tmp_path, "run", "dicom_synthetic_fedavg", "federation=deployment", "federation.num_sites=2")
    assert missing.returncode == 2 and "federation.root_certificates: set the CA certificate" in missing.stderr
    port = free_port()
    result = _cli(tmp_path, "run", "dicom_synthetic_fedavg", "federation=deployment", f"federation.superlink=127.0.0.1:{port}",
                  f"federation.root_certificates={certs / 'ca.pem'}", "federation.num_sites=2", "federation.server_eval_site=null")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"flip: cannot reach the SuperLink at 127.0.0.1:{port}: connection refused (is `flip server` running there, on that port?)"


def test_deployment_settings_are_checked_with_their_keys(tmp_path):
    result = _cli(tmp_path, "validate", "dicom_synthetic_fedavg", "federation=deployment", "federation.site_names=[a,a]",
                  "federation.superlink=https://x", "federation.rejoin_timeout=-1")
    assert result.returncode == 2
    assert "federation.site_names: lists a site twice: ['a', 'a']" in result.stderr
    assert "federation.site_names: lists 2 site(s), federation.num_sites is 2" not in result.stderr
    assert "federation.superlink: must be HOST:PORT (no scheme), got 'https://x'" in result.stderr
    assert "federation.root_certificates" not in result.stderr  # how to connect is checked when a run starts
    assert "federation.rejoin_timeout: must be 0 or more, got -1" in result.stderr


def test_a_site_file_is_checked_before_anything_starts(certs, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(f"name: site-1\nnode: {{superlink: 'h:1', ca_certificate: {certs / 'ca.pem'}, private_key: {certs / 'server.key'}, heartbeat_s: 5, colour: red}}\n")
    result = _cli(tmp_path, "site", "--config", str(site))
    assert result.returncode == 2
    assert f"{site}.node.colour: unknown key" in result.stderr
    assert f"{site}.node.heartbeat_s: must be between 10 and 1800 seconds" in result.stderr
    site.write_text(f"name: site-1\nnode: {{superlink: '127.0.0.1:1', ca_certificate: {certs / 'ca.pem'}, private_key: {certs / 'server.key'}}}\n")
    result = _cli(tmp_path, "site", "--config", str(site))
    assert result.returncode == 1 and "node.private_key" in result.stderr and "is not an unencrypted OpenSSH private key" in result.stderr


def test_a_site_with_the_wrong_ca_is_told_so_in_one_line(certs, tmp_path):
    """A TLS server whose certificate the site's CA does not verify (a SuperLink's certificate
    from another `flip certs` folder), served here by Python's ssl module."""
    import socket
    import ssl
    import threading

    other = write_certificates(tmp_path / "other", [], []).folder
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(other / "server.pem", other / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        finally:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(FlipError, match=rf"the server at 127\.0\.0\.1:{port} presents a TLS certificate that .*ca\.pem does not verify"):
            probe_superlink(f"127.0.0.1:{port}", certs / "ca.pem")
    finally:
        thread.join(10)
        listener.close()


def test_the_server_reports_only_to_the_tracking_uris_its_settings_list(tmp_path):
    """A received config must not make the server connect anywhere its own settings do not allow."""
    from flip.experiment.compose import compose_recipe
    from flip.experiment.recipes import resolve_recipe
    from flip.federation.deployment.server_run import server_config
    from flip.federation.shipping import pack_config
    from tests.federation.deployment_helpers import deployment_overrides

    uri = "http://tracker.example.org:5000"
    overrides = [*deployment_overrides(9092, tmp_path / "ca.pem", 1), "logger=mlflow", f"logger.tracking_uri={uri}"]
    text, digest = pack_config(compose_recipe(resolve_recipe("dicom_synthetic_fedavg"), overrides))
    with pytest.raises(FlipError, match=rf"logger.tracking_uri: {uri} is not one of the tracking URIs this server reports to"):
        server_config(text, digest, {})
    assert server_config(text, digest, {"tracking_uris": [uri]}).logger.tracking_uri == uri


def test_a_deployment_evaluates_only_a_run_inside_the_servers_runs_folder(tmp_path):
    from omegaconf import OmegaConf

    from flip.federation.deployment.server_run import evaluated_checkpoint

    runs = tmp_path / "runs"
    (runs / "2026-12-05" / "10-00-00_x").mkdir(parents=True)

    def asked(path: str) -> Path | None:
        return evaluated_checkpoint(runs, OmegaConf.create({"job": "evaluate", "evaluation": {"checkpoint": path}}))

    assert asked("2026-12-05/10-00-00_x") == (runs / "2026-12-05" / "10-00-00_x").resolve()
    for hostile in (str(tmp_path), "../runs-elsewhere", "2026-12-05/../../secret.ckpt", "/etc/passwd"):
        with pytest.raises(FlipError, match="evaluation.checkpoint must name one of its runs"):
            asked(hostile)
    assert evaluated_checkpoint(runs, OmegaConf.create({"job": "train", "evaluation": {"checkpoint": "/etc/passwd"}})) is None
