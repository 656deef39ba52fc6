"""docker-compose.yml and the Dockerfile, checked statically: no Docker engine runs where these tests run."""

from __future__ import annotations

import re

import pytest
import yaml

from imgsearch.settings import Settings
from tests.support import REPO

ROOT = REPO


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_milvus_standalone_stack_with_pinned_2_6_images(compose):
    services = compose["services"]
    assert {"etcd", "minio", "milvus", "api", "ui"} <= set(services)
    assert re.fullmatch(r"milvusdb/milvus:v2\.6\.\d+", services["milvus"]["image"])
    for name in ("etcd", "minio", "milvus"):
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest")


def test_every_server_has_a_healthcheck_and_starts_after_healthy_dependencies(compose):
    services = compose["services"]
    for name in ("etcd", "minio", "milvus", "api"):
        assert services[name]["healthcheck"]["test"], name
    for name, deps in {"milvus": {"etcd", "minio"}, "api": {"milvus"}, "ui": {"api"}}.items():
        depends = services[name]["depends_on"]
        assert set(depends) == deps
        assert all(depends[d]["condition"] == "service_healthy" for d in deps)


def test_data_lives_in_named_volumes_and_images_are_mounted_read_only(compose):
    declared = set(compose["volumes"])
    assert {"etcd-data", "minio-data", "milvus-data", "model-cache"} <= declared
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".", "$")):
                assert source in declared, volume
    api_volumes = compose["services"]["api"]["volumes"]
    assert any(v.endswith(":/images:ro") for v in api_volumes)
    assert any(v.startswith("model-cache:") for v in api_volumes)


def test_environment_names_match_the_settings(compose):
    fields = {f"IMGSEARCH_{name.upper()}" for name in Settings.model_fields}
    for service in ("api", "ui"):
        env = compose["services"][service]["environment"]
        unknown = {k for k in env if k.startswith("IMGSEARCH_")} - fields
        assert not unknown, f"{service}: {unknown}"
    api_env = compose["services"]["api"]["environment"]
    assert api_env["IMGSEARCH_MILVUS_URI"] == "http://milvus:19530"
    assert Settings(milvus_uri=api_env["IMGSEARCH_MILVUS_URI"]).is_embedded is False
    assert compose["services"]["ui"]["environment"]["IMGSEARCH_API_URL"] == "http://api:8000"


def test_dockerfile_copies_what_exists_and_installs_cpu_torch_before_the_project():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert dockerfile.index("torch==") < dockerfile.index("pip install '.[ocr]'")  # the OCR engine too
    assert "whl/cpu" in dockerfile
    assert "imgsearch" in dockerfile.split("CMD", 1)[1]


def test_nothing_is_published_beyond_this_host_and_every_service_needs_its_secret(compose):
    services = compose["services"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            host = mapping.rsplit(":", 2)[0]
            assert host in ("127.0.0.1", "${IMGSEARCH_BIND:-127.0.0.1}"), f"{name} publishes {mapping}"
    assert "ports" not in services["etcd"] and "ports" not in services["minio"]
    # `${VAR:?message}`: compose refuses to start without the secret instead of running open.
    for service in ("api", "ui"):
        assert services[service]["environment"]["IMGSEARCH_API_KEY"].startswith("${IMGSEARCH_API_KEY:?")
    assert services["ui"]["environment"]["IMGSEARCH_UI_PASSWORD"].startswith("${IMGSEARCH_UI_PASSWORD:?")
    milvus_env = services["milvus"]["environment"]
    assert milvus_env["COMMON_SECURITY_AUTHORIZATIONENABLED"] == "true"
    assert milvus_env["COMMON_SECURITY_DEFAULTROOTPASSWORD"].startswith("${MILVUS_ROOT_PASSWORD:?")
    assert services["api"]["environment"]["IMGSEARCH_MILVUS_TOKEN"].startswith("root:${MILVUS_ROOT_PASSWORD:?")
    # Inside its container the UI must listen on all interfaces, or the published port reaches nothing.
    assert services["ui"]["command"][services["ui"]["command"].index("--host") + 1] == "0.0.0.0"
