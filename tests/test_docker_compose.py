"""The Docker stack and the Kibana objects, checked by reading the files (no Docker needed).

docker-compose.yml, Dockerfile, .env.example, .dockerignore and kibana/ must agree with the
code: the Elasticsearch version the tests run against, every environment variable the app
reads, the ports gunicorn and Elasticsearch listen on, the thumbnail store both programs share,
the index mapping's field names and the web app's thumbnail route. Fast: no network, no model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from imgsearch.localnode import ES_VERSION
from imgsearch.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SAVED_OBJECTS = ROOT / "kibana" / "saved_objects.ndjson"
IMPORT_SCRIPT = ROOT / "kibana" / "import.sh"
MAPPING = ROOT / "es_mappings" / "images.json"

ES_IMAGE = f"docker.elastic.co/elasticsearch/elasticsearch:{ES_VERSION}"
KIBANA_IMAGE = f"docker.elastic.co/kibana/kibana:{ES_VERSION}"
APP_SERVICES = ("webapp", "indexer", "watch", "backup")
# The services that connect as the app's own user (the backup service has a user of its own).
APP_USER_SERVICES = ("webapp", "indexer", "watch")
# Defaults that are wrong inside a container (loopback addresses, paths of a checkout): the
# image or the service must set these whatever Settings says.
MUST_SET_IN_CONTAINER = (
    "ES_URL", "ES_USERNAME", "ES_PASSWORD", "IMGSEARCH_CACHE_DIR", "IMGSEARCH_THUMBNAIL_DIR",
    "IMGSEARCH_MODEL_STORE",
)

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, $VAR; $$ escapes.
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --- helpers ---------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def interpolate(value, env: dict[str, str]):
    """What Compose makes of ``value`` with ``env`` (the .env file); recurses into lists/dicts."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        current = env.get(name)
        empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op and op.endswith("-") and empty:
            return arg
        if op and op.endswith("?") and empty:
            raise KeyError(f"{name} is required: {arg}")
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def referenced_variables(text: str) -> set[str]:
    """Names Compose interpolates in ``text`` (``$$NAME`` is an escape, not a reference)."""
    return {
        m.group("braced") or m.group("bare")
        for m in _INTERPOLATION.finditer(text)
        if m.group(0) != "$$"
    }


def as_list(command) -> list[str]:
    if command is None:
        return []
    return command if isinstance(command, list) else command.split()


def healthcheck_text(service: dict) -> str:
    test = service.get("healthcheck", {}).get("test")
    assert test, "no healthcheck"
    return " ".join(test) if isinstance(test, list) else test


def parse_dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """Stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        assert stages, "an instruction before FROM"
        stages[-1].append((keyword, args.strip()))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                env[pair[0]] = pair[1].strip('"')
    return env


def app_environment_reads() -> dict[str, bool]:
    """Every ES_*/IMGSEARCH_*/WEBAPP_* variable the app reads -> whether it has a default.

    Settings declares its variables, and every one has a default (None for the credentials,
    which MUST_SET_IN_CONTAINER requires of a container); gunicorn.conf.py's are read here.
    """
    call = re.compile(
        r"(?:os\.environ\.get|os\.getenv)\(\s*\"(?P<name>(?:ES|IMGSEARCH|WEBAPP)_[A-Z0-9_]+)\""
        r"\s*(?P<more>,)?"
    )
    index = re.compile(r"os\.environ\[\s*\"(?P<name>(?:ES|IMGSEARCH|WEBAPP)_[A-Z0-9_]+)\"\s*\]")
    reads: dict[str, bool] = dict.fromkeys(Settings.variables(), True)
    text = (ROOT / "webapp" / "gunicorn.conf.py").read_text()
    for m in call.finditer(text):
        reads[m.group("name")] = reads.get(m.group("name"), False) or bool(m.group("more"))
    for m in index.finditer(text):
        reads.setdefault(m.group("name"), False)
    return reads


def mapping_fields() -> dict[str, dict]:
    """Field path -> its mapping, sub-fields (``file_name.text``) included."""
    out: dict[str, dict] = {}

    def walk(properties: dict, prefix: str = "") -> None:
        for name, spec in properties.items():
            out[prefix + name] = spec
            walk(spec.get("properties", {}), f"{prefix}{name}.")
            for sub, sub_spec in spec.get("fields", {}).items():
                out[f"{prefix}{name}.{sub}"] = sub_spec

    walk(json.loads(MAPPING.read_text())["mappings"]["properties"])
    return out


def split_port(entry: str) -> tuple[str, str, str]:
    host_ip, host_port, container_port = entry.rsplit(":", 2)
    return host_ip, host_port, container_port


def split_volume(entry: str) -> tuple[str, str, str]:
    source, target, *mode = entry.split(":")
    return source, target, mode[0] if mode else "rw"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def dotenv(env_example) -> dict[str, str]:
    """.env.example as a user would fill it in: every password set."""
    return {k: (v or f"test-{k.lower()}") if "PASSWORD" in k else v
            for k, v in env_example.items()}


@pytest.fixture(scope="module")
def compose(raw_compose, dotenv) -> dict:
    """The configuration as Compose sees it with that .env."""
    return interpolate(raw_compose, dotenv)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def saved_objects() -> list[dict]:
    lines = SAVED_OBJECTS.read_text().splitlines()
    assert lines and all(line.strip() for line in lines), "one JSON object per line, no blanks"
    return [json.loads(line) for line in lines]


def container_env(service: dict, stages) -> dict[str, str]:
    """What the app sees in the container: the image's ENV, overridden by the service's."""
    env = dockerfile_env(stages[-1])
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    return env


# --- the compose file ------------------------------------------------------------------------


def test_compose_parses_and_has_the_services(raw_compose):
    assert set(raw_compose["services"]) == {"elasticsearch", "setup", "kibana", "webapp",
                                            "indexer", "watch", "backup"}
    assert set(raw_compose["volumes"]) >= {"esdata", "thumbnails"}


def test_images_are_the_tested_elasticsearch_version(raw_compose, services):
    assert services["elasticsearch"]["image"] == ES_IMAGE
    assert services["setup"]["image"] == ES_IMAGE
    assert services["kibana"]["image"] == KIBANA_IMAGE
    # Pinned in the file itself: a tag from .env could drift from what the tests ran against.
    for name, service in raw_compose["services"].items():
        assert "$" not in service.get("image", ""), f"{name}: image tag from a variable"


def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_every_compose_variable_is_listed_in_env_example(raw_compose, env_example):
    # Compose interpolates values (comments and keys are left alone).
    used = {name for text in _strings(raw_compose) for name in referenced_variables(text)}
    assert used, "the regex found no ${VAR} at all"
    missing = sorted(used - set(env_example))
    assert not missing, f"used in docker-compose.yml but not in .env.example: {missing}"


def test_compose_config_needs_the_passwords(raw_compose, env_example):
    """An unfilled .env.example (empty passwords) is refused instead of starting insecurely."""
    for name, value in env_example.items():
        if "PASSWORD" in name:
            assert value == "", f".env.example ships a password for {name}"
    with pytest.raises(KeyError, match="PASSWORD"):
        interpolate(raw_compose, env_example)


def test_app_reads_are_parsed():
    reads = app_environment_reads()
    assert {"ES_URL", "ES_PASSWORD", "IMGSEARCH_THUMBNAIL_DIR", "WEBAPP_BIND"} <= set(reads)
    assert reads["ES_URL"] and reads["WEBAPP_BIND"]


@pytest.mark.parametrize("service_name", APP_SERVICES)
def test_every_app_variable_is_set_or_defaulted(services, stages, service_name):
    reads = app_environment_reads()
    env = container_env(services[service_name], stages)
    for name, has_default in sorted(reads.items()):
        assert name in env or has_default, f"{service_name}: {name} has no default and is unset"
    for name in MUST_SET_IN_CONTAINER:
        assert env.get(name), f"{service_name}: {name} must be set for a container"
    # No typos: every app-namespace variable set for the container is one the app reads.
    for name in env:
        if re.match(r"(ES|IMGSEARCH|WEBAPP)_", name):
            assert name in reads, f"{service_name}: {name} is set but nothing reads it"


def test_webapp_binds_all_interfaces_in_its_container(services, stages):
    env = container_env(services["webapp"], stages)
    host, _, port = env["WEBAPP_BIND"].rpartition(":")
    assert host == "0.0.0.0" and port == "8000"


@pytest.mark.parametrize("service_name", APP_SERVICES)
def test_app_talks_to_the_compose_elasticsearch_as_its_own_user(services, service_name):
    env = services[service_name]["environment"]
    assert env["ES_URL"] == "http://elasticsearch:9200"
    if service_name in APP_USER_SERVICES:
        assert env["ES_USERNAME"] == "imgsearch"
        assert env["ES_PASSWORD"] == "test-app_es_password"
    else:
        assert env["ES_USERNAME"] == "imgsearch_backup"
        assert env["ES_PASSWORD"] == "test-backup_es_password"
    assert env["ES_INDEX"] == "images"
    assert env["ES_CA_CERTS"] == ""  # TLS off in the compose network; Settings reads "" as None


def test_published_ports_are_loopback_only_and_match_the_servers(services, stages, env_example):
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"elasticsearch", "kibana", "webapp"}
    for name, ports in published.items():
        for entry in ports:
            assert split_port(entry)[0] == "127.0.0.1", f"{name} publishes {entry}"

    bind_port = container_env(services["webapp"], stages)["WEBAPP_BIND"].rpartition(":")[2]
    assert services["webapp"]["ports"] == [f"127.0.0.1:{env_example['WEBAPP_PORT']}:{bind_port}"]
    assert services["elasticsearch"]["ports"] == [f"127.0.0.1:{env_example['ES_PORT']}:9200"]
    assert services["kibana"]["ports"] == [f"127.0.0.1:{env_example['KIBANA_PORT']}:5601"]
    assert "localhost:9200/" in healthcheck_text(services["elasticsearch"])
    assert f"127.0.0.1:{bind_port}/healthz" in healthcheck_text(services["webapp"])
    assert services["kibana"]["environment"]["ELASTICSEARCH_HOSTS"] == "http://elasticsearch:9200"


def test_healthchecks(raw_compose):
    services = raw_compose["services"]
    es = healthcheck_text(services["elasticsearch"])
    assert "curl" in es and "_cluster/health" in es
    # Credentials, expanded by the container's shell (so the value is not in the config).
    assert '-u "elastic:$${ELASTIC_PASSWORD}"' in es
    assert "/api/status" in healthcheck_text(services["kibana"])
    webapp = healthcheck_text(services["webapp"])
    assert "/healthz" in webapp
    compile(services["webapp"]["healthcheck"]["test"][-1], "<healthcheck>", "exec")


def test_elasticsearch_is_secured_single_node_with_bounded_memory(services):
    es = services["elasticsearch"]
    env = es["environment"]
    assert env["xpack.security.enabled"] == "true"
    assert env["discovery.type"] == "single-node"
    assert env["ELASTIC_PASSWORD"] == "test-elastic_password"
    heap = re.fullmatch(r"-Xms(\d+)([mg]) -Xmx(\d+)([mg])", env["ES_JAVA_OPTS"])
    assert heap and heap.group(1, 2) == heap.group(3, 4), env["ES_JAVA_OPTS"]

    def mib(number: str, unit: str) -> int:
        return int(number) * (1024 if unit.lower() == "g" else 1)

    limit = re.fullmatch(r"(\d+)([mMgG])", es["mem_limit"])
    assert limit, es["mem_limit"]
    # The heap leaves at least half of the container to the OS cache and off-heap memory.
    assert 2 * mib(*heap.group(1, 2)) <= mib(*limit.groups())


def test_elasticsearch_data_is_a_named_volume(raw_compose, services):
    volumes = [split_volume(v) for v in services["elasticsearch"]["volumes"]]
    data = [v for v in volumes if v[1] == "/usr/share/elasticsearch/data"]
    assert len(data) == 1
    assert data[0][0] in raw_compose["volumes"], "the data directory must be a named volume"


def test_backups_go_to_a_host_folder_in_elasticsearchs_path_repo(raw_compose, services,
                                                                 stages, env_example):
    """Elasticsearch writes snapshots only under path.repo, and the backup service's verbs must
    see the folder where Elasticsearch does (imgsearch/snapshots.py): one host folder, the same
    path in both; a bind mount, since backups must outlive `docker compose down -v`."""
    es = services["elasticsearch"]
    assert es["environment"]["path.repo"] == "/backups"
    backups = f"${{BACKUPS_DIR:-{env_example['BACKUPS_DIR']}}}:/backups"
    assert backups in raw_compose["services"]["elasticsearch"]["volumes"]
    assert backups in raw_compose["services"]["backup"]["volumes"]
    sources = {s for name in ("elasticsearch", "backup")
               for s, t, _ in map(split_volume, services[name]["volumes"]) if t == "/backups"}
    assert sources == {env_example["BACKUPS_DIR"]}
    assert sources.pop().startswith(("./", "/")), "a host folder, not a named volume"
    assert container_env(services["backup"], stages)["IMGSEARCH_BACKUP_DIR"] == "/backups"
    # Only the backup service backs up and restores: no other app service has the folder.
    for name in APP_USER_SERVICES:
        assert not any(t == "/backups" for _, t, _ in map(split_volume,
                                                          services[name]["volumes"])), name
    # What a backup copies beside its snapshot and a restore copies back: the web app's
    # thumbnails and uploads volumes, at the same paths.
    webapp_env, backup_env = (container_env(services[n], stages) for n in ("webapp", "backup"))
    mounts = {t: s for s, t, _ in map(split_volume, services["backup"]["volumes"])}
    webapp_mounts = {t: s for s, t, _ in map(split_volume, services["webapp"]["volumes"])}
    for variable in ("IMGSEARCH_THUMBNAIL_DIR", "IMGSEARCH_UPLOAD_DIR"):
        assert backup_env[variable] == webapp_env[variable]
        assert mounts[backup_env[variable]] == webapp_mounts[webapp_env[variable]]


def test_backup_is_a_profile_running_the_backup_verb(services):
    backup, indexer = services["backup"], services["indexer"]
    assert backup["profiles"] == ["backup"]
    assert backup["image"] == indexer["image"] and backup["build"] == indexer["build"]
    argv = as_list(backup.get("entrypoint")) + as_list(backup.get("command"))
    assert argv == ["python", "-m", "indexer", "backup"]  # `run --rm backup restore` restores
    assert backup["restart"] == "no"


def test_thumbnail_store_is_one_named_volume_at_the_configured_path(raw_compose, services,
                                                                    stages):
    sources = set()
    for name in APP_SERVICES:
        directory = container_env(services[name], stages)["IMGSEARCH_THUMBNAIL_DIR"]
        mounts = {target: source for source, target, _ in map(split_volume,
                                                              services[name]["volumes"])}
        assert directory in mounts, f"{name}: nothing mounted at {directory}"
        assert mounts[directory] in raw_compose["volumes"], f"{name}: not a named volume"
        sources.add(mounts[directory])
    assert len(sources) == 1, "web app and indexer must share one thumbnail volume"
    # The volume starts with the image's directory owner: the non-root app user.
    runs = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    directory = container_env(services["webapp"], stages)["IMGSEARCH_THUMBNAIL_DIR"]
    assert f"mkdir -p {directory}" in runs and f"chown imgsearch:imgsearch {directory}" in runs


def test_upload_folder_is_one_named_volume_at_the_configured_path(raw_compose, services,
                                                                   stages):
    """Photos added through the API must outlive the container, in one volume the web app
    owns and the indexer sees (to index them into a new index)."""
    sources = set()
    for name in APP_SERVICES:
        directory = container_env(services[name], stages)["IMGSEARCH_UPLOAD_DIR"]
        mounts = {target: source for source, target, _ in map(split_volume,
                                                              services[name]["volumes"])}
        assert mounts.get(directory) in raw_compose["volumes"], f"{name}: no volume at {directory}"
        sources.add(mounts[directory])
    assert len(sources) == 1
    runs = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    directory = container_env(services["webapp"], stages)["IMGSEARCH_UPLOAD_DIR"]
    assert f"chown imgsearch:imgsearch /data/thumbnails {directory}" in runs


def test_indexer_is_a_profile_indexing_the_mounted_folder(raw_compose, services):
    indexer, webapp = services["indexer"], services["webapp"]
    assert indexer["profiles"] == ["indexer"]
    assert "profiles" not in webapp
    assert indexer["image"] == webapp["image"] and indexer["build"] == webapp["build"]
    argv = as_list(indexer.get("entrypoint")) + as_list(indexer.get("command"))
    assert argv == ["python", "-m", "indexer", "/images"]
    raw_mounts = raw_compose["services"]["indexer"]["volumes"]
    assert "${IMAGES_DIR:-./var/images}:/images:ro" in raw_mounts
    # The web app sees the same folder at the same path: documents store /images/... paths.
    assert "${IMAGES_DIR:-./var/images}:/images:ro" in raw_compose["services"]["webapp"]["volumes"]


def test_watch_is_a_profile_watching_the_mounted_folder(raw_compose, services, stages):
    watch, indexer = services["watch"], services["indexer"]
    assert watch["profiles"] == ["watch"]
    assert watch["image"] == indexer["image"] and watch["build"] == indexer["build"]
    argv = as_list(watch.get("entrypoint")) + as_list(watch.get("command"))
    assert argv == ["python", "-m", "indexer", "watch", "/images", "--no-progress"]
    raw_mounts = raw_compose["services"]["watch"]["volumes"]
    # The same folder at the same path as the web app's: documents store /images/... paths.
    assert "${IMAGES_DIR:-./var/images}:/images:ro" in raw_mounts
    # Its state in a named volume, owned by the app's user from the image's directory: a new
    # container catches up from it instead of reading every file again.
    state = container_env(watch, stages)["IMGSEARCH_WATCH_STATE_DIR"]
    mounts = {target: source for source, target, _ in map(split_volume, watch["volumes"])}
    assert mounts.get(state) in raw_compose["volumes"]
    runs = " ".join(args for keyword, args in stages[-1] if keyword == "RUN")
    assert "chown imgsearch:imgsearch" in runs and state in runs
    assert watch.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert watch["restart"] == "unless-stopped"


def test_start_order(services):
    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("setup") == {"elasticsearch": "service_healthy"}
    for name in ("kibana", "webapp", "indexer", "watch", "backup"):
        assert conditions(name) == {"elasticsearch": "service_healthy",
                                    "setup": "service_completed_successfully"}


def test_kibana_connects_as_kibana_system(services):
    env = services["kibana"]["environment"]
    assert env["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert env["ELASTICSEARCH_PASSWORD"] == "test-kibana_password"


def _setup_script(raw_compose) -> str:
    service = raw_compose["services"]["setup"]
    assert service["entrypoint"] == ["bash", "-c"]
    (script,) = service["command"]
    return script


def test_setup_script_is_valid_bash(raw_compose):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    raw = _setup_script(raw_compose)
    # Every shell variable is $$-escaped: Compose substitutes nothing into the script.
    assert referenced_variables(raw) == set()
    script = interpolate(raw, {})
    proc = subprocess.run([bash, "-n", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_setup_creates_the_users_the_services_use(raw_compose, services):
    script = interpolate(_setup_script(raw_compose), {})
    assert "/_security/user/kibana_system/_password" in script
    assert "/_security/role/imgsearch_app" in script
    user = services["webapp"]["environment"]["ES_USERNAME"]
    assert f"/_security/user/{user} " in script
    assert '\\"roles\\":[\\"imgsearch_app\\"]' in script
    # The role covers the alias and its timestamped indices, nothing else.
    assert '\\"names\\":[\\"$ES_INDEX\\",\\"$ES_INDEX-*\\"]' in script
    assert services["setup"]["environment"]["ES_INDEX"] == services["webapp"]["environment"][
        "ES_INDEX"]


def setup_roles(raw_compose) -> dict[str, dict]:
    """The roles the setup script PUTs, as Elasticsearch receives them (``$ES_INDEX`` left as
    it is): ``{name: body}``."""
    script = interpolate(_setup_script(raw_compose), {})
    found = re.findall(r'/_security/role/(\w+) \\\n\s+"(.*)"\n', script)
    return {name: json.loads(body.replace('\\"', '"')) for name, body in found}


def test_setup_creates_the_backup_role_and_user(raw_compose, services):
    """The backup service's user has a role of exactly what `backup` and `restore` call
    (imgsearch/snapshots.py; each privilege checked necessary against a node with security
    on: docs/DOCKER.md, "Backups"): no `manage` or `all`, no document writes, the app's
    indices only."""
    roles = setup_roles(raw_compose)
    assert set(roles) == {"imgsearch_app", "imgsearch_backup"}
    role = roles["imgsearch_backup"]
    assert role["cluster"] == ["monitor", "create_snapshot", "cluster:admin/repository/put",
                               "cluster:admin/snapshot/delete",
                               "cluster:admin/snapshot/restore"]
    (indices,) = role["indices"]
    assert indices["names"] == ["$ES_INDEX", "$ES_INDEX-*"]  # the keys and decisions too
    assert indices["privileges"] == ["read", "view_index_metadata", "maintenance",
                                     "indices:admin/close", "indices:admin/aliases"]
    # The app's role, by contrast, may not snapshot or restore.
    assert roles["imgsearch_app"]["cluster"] == ["monitor"]
    script = interpolate(_setup_script(raw_compose), {})
    user = services["backup"]["environment"]["ES_USERNAME"]
    assert f"/_security/user/{user} " in script
    assert '\\"roles\\":[\\"imgsearch_backup\\"]' in script
    assert 'check_password BACKUP_ES_PASSWORD "$BACKUP_ES_PASSWORD"' in script
    assert (services["setup"]["environment"]["BACKUP_ES_PASSWORD"]
            == services["backup"]["environment"]["ES_PASSWORD"])


def test_credentials_never_reach_commands_or_logs(raw_compose):
    for name, service in raw_compose["services"].items():
        for key, value in service.get("environment", {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
        texts = [json.dumps(service.get("command")), json.dumps(service.get("entrypoint"))]
        if "healthcheck" in service:
            texts.append(healthcheck_text(service))
        for text in texts:
            # Only $$-escaped: expanded by the container's shell, never pasted in by Compose.
            unescaped = [v for v in referenced_variables(text) if "PASSWORD" in v]
            assert not unescaped, f"{name}: {unescaped} interpolated into a command"
    script = _setup_script(raw_compose)
    assert "set -x" not in script
    for line in script.splitlines():
        if re.search(r"\becho\b", line):
            assert not re.search(r"\$\$\{?\w*PASSWORD", line), f"echoes a password: {line}"


def test_settings_describe_masks_the_password():
    described = Settings(es_username="imgsearch", es_password="s3cret-value").describe()
    assert described["es_password"] == "***"
    assert "s3cret-value" not in json.dumps(described)


# --- Dockerfile, .dockerignore, .gitignore ---------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim(stages):
    assert len(stages) >= 2
    assert stages[0][0] == ("FROM", "python:3.11-slim AS build")
    assert stages[-1][0][1].split()[0] == "python:3.11-slim"


def test_build_stage_installs_pinned_requirements_and_converts_the_weights(stages):
    build_runs = [args for keyword, args in stages[0] if keyword == "RUN"]
    assert any(re.search(r"apt-get install .*\bnodejs\b.*\bnpm\b", r) for r in build_runs)
    assert any(re.search(r"\bpip install (.* )?-r requirements\.txt", r) for r in build_runs)
    assert "python -m imgsearch.weights" in build_runs
    # The very module `make setup` runs.
    assert re.search(r"^weights:.*\n\t\$\(PY\) -m imgsearch\.weights$",
                     (ROOT / "Makefile").read_text(), re.M)
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+\-]+", line), line


def test_final_stage_has_the_converted_weights_where_the_app_looks(stages):
    converted = re.search(r'^CONVERTED_NAME = "([^"]+)"$',
                          (ROOT / "imgsearch" / "weights.py").read_text(), re.M).group(1)
    build_cache = dockerfile_env(stages[0])["IMGSEARCH_CACHE_DIR"]
    final_cache = dockerfile_env(stages[-1])["IMGSEARCH_CACHE_DIR"]
    copies = [args for keyword, args in stages[-1] if keyword == "COPY"]
    assert f"--from=build {build_cache}/{converted} {final_cache}/" in copies


def test_the_image_carries_the_base_model_converted_for_openvino(stages):
    build_runs = [args for keyword, args in stages[0] if keyword == "RUN"]
    converts = [r for r in build_runs if "Embedder(Settings.from_env(runtime='openvino'))" in r]
    assert converts, "the build stage must convert the base model for OpenVINO"
    assert build_runs.index(converts[0]) > build_runs.index("python -m imgsearch.weights")
    build_cache = dockerfile_env(stages[0])["IMGSEARCH_CACHE_DIR"]
    final_cache = dockerfile_env(stages[-1])["IMGSEARCH_CACHE_DIR"]
    copies = [args for keyword, args in stages[-1] if keyword == "COPY"]
    # Where imgsearch/ircache.py looks, writable by the app's user (tuned models' conversions).
    assert (f"--from=build --chown=imgsearch:imgsearch {build_cache}/openvino "
            f"{final_cache}/openvino") in copies


def test_final_stage_has_the_code_runs_as_a_user_and_serves_with_gunicorn(stages):
    final = stages[-1]
    copies = {args for keyword, args in final if keyword == "COPY"}
    for package in ("es_mappings", "imgsearch", "indexer", "webapp"):
        assert f"{package}/ {package}/" in copies
    users = [args for keyword, args in final if keyword == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    starts = [json.loads(args) for keyword, args in final if keyword in ("CMD", "ENTRYPOINT")]
    # As `make serve`: nginx in front of gunicorn (webapp/serve.py), nginx in the image.
    assert starts[-1] == ["python", "-m", "webapp.serve"]
    assert (ROOT / "webapp" / "gunicorn.conf.py").is_file()
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "install -y --no-install-recommends nginx-light" in runs


def test_dockerignore_keeps_local_state_and_secrets_out():
    entries = {line.strip().rstrip("/") for line in
               (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "var", ".git", ".env"} <= entries


def test_gitignore_ignores_env():
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# --- Kibana saved objects --------------------------------------------------------------------


def _by_type(saved_objects, kind) -> list[dict]:
    return [o for o in saved_objects if o["type"] == kind]


def _lens_panels(dashboard: dict) -> list[dict]:
    return [p for p in json.loads(dashboard["attributes"]["panelsJSON"]) if p["type"] == "lens"]


def test_saved_objects_shape(saved_objects):
    assert sorted(o["type"] for o in saved_objects) == ["dashboard", "index-pattern", "search"]
    ids = {(o["type"], o["id"]) for o in saved_objects}
    assert len(ids) == len(saved_objects)
    for obj in saved_objects:
        assert {"id", "type", "attributes", "references"} <= set(obj)
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in ids, f"{obj['id']}: dangling reference {ref}"


def test_data_view_is_the_alias_with_its_time_field(saved_objects, env_example):
    (view,) = _by_type(saved_objects, "index-pattern")
    attrs = view["attributes"]
    assert attrs["title"] == Settings().es_index == env_example["ES_INDEX"] == "images"
    assert attrs["timeFieldName"] == "indexed_at"
    assert mapping_fields()["indexed_at"]["type"] == "date"


def test_saved_objects_name_only_mapped_fields(saved_objects):
    fields = mapping_fields()
    used: set[str] = set()
    (view,) = _by_type(saved_objects, "index-pattern")
    attrs = view["attributes"]
    used.add(attrs["timeFieldName"])
    used |= set(json.loads(attrs["fieldFormatMap"]))
    used |= set(json.loads(attrs.get("fieldAttrs", "{}")))
    used |= {f["value"] for f in json.loads(attrs.get("sourceFilters", "[]"))}
    assert json.loads(attrs.get("runtimeFieldMap", "{}")) == {}
    (search,) = _by_type(saved_objects, "search")
    used |= set(search["attributes"]["columns"])
    used |= {field for field, _ in search["attributes"]["sort"]}
    (dashboard,) = _by_type(saved_objects, "dashboard")
    for panel in _lens_panels(dashboard):
        layers = panel["embeddableConfig"]["attributes"]["state"]["datasourceStates"][
            "formBased"]["layers"]
        for layer in layers.values():
            for column in layer["columns"].values():
                if column["sourceField"] != "___records___":
                    used.add(column["sourceField"])
    unknown = sorted(used - set(fields))
    assert not unknown, f"not in es_mappings/images.json: {unknown}"


def test_saved_search_columns(saved_objects):
    (search,) = _by_type(saved_objects, "search")
    columns = search["attributes"]["columns"]
    assert columns[1:] == ["file_name", "label", "folder", "width", "height", "format"]
    assert columns[0] == "content_hash"  # shown as the thumbnail
    source = json.loads(search["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
    (ref,) = search["references"]
    assert ref["name"] == source["indexRefName"] and ref["type"] == "index-pattern"


def test_dashboard_charts(saved_objects):
    (dashboard,) = _by_type(saved_objects, "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dashboard["references"]}
    charted = set()
    for panel in _lens_panels(dashboard):
        attrs = panel["embeddableConfig"]["attributes"]
        layers = attrs["state"]["datasourceStates"]["formBased"]["layers"]
        for layer_id, layer in layers.items():
            name = f"indexpattern-datasource-layer-{layer_id}"
            assert name in {r["name"] for r in attrs["references"]}
            assert f"{panel['panelIndex']}:{name}" in refs
            assert sorted(layer["columnOrder"]) == sorted(layer["columns"])
            for column in layer["columns"].values():
                if column["operationType"] in ("terms", "date_histogram"):
                    charted.add(column["sourceField"])
    assert charted == {"label", "folder", "format", "indexed_at"}
    searches = [p for p in panels if p["type"] == "search"]
    assert [refs[f"{p['panelIndex']}:{p['panelRefName']}"]["type"] for p in searches] == [
        "search"]
    indexes = [p["panelIndex"] for p in panels]
    assert len(indexes) == len(set(indexes))


def _thumbnail_format(saved_objects) -> tuple[str, dict]:
    (view,) = _by_type(saved_objects, "index-pattern")
    formats = json.loads(view["attributes"]["fieldFormatMap"])
    images = [(f, spec) for f, spec in formats.items()
              if spec["id"] == "url" and spec["params"]["type"] == "img"]
    assert len(images) == 1
    return images[0]


def test_thumbnail_url_template_resolves_through_the_web_app(saved_objects, tmp_path,
                                                             env_example):
    """The image-formatted field's URL, filled with a real document's value, is a thumbnail
    the web app serves (the stored ``thumbnail`` ref, ``ab/<hash>.webp``, would not be)."""
    from elasticsearch import Elasticsearch

    from imgsearch.store import ImageStore
    from imgsearch.thumbnails import ThumbnailStore
    from webapp import create_app

    field, spec = _thumbnail_format(saved_objects)
    assert field == "content_hash"
    template = spec["params"]["urlTemplate"]
    base = f"http://localhost:{env_example['WEBAPP_PORT']}"
    assert template.startswith(base + "/")
    assert f'template_base="{base}"' in IMPORT_SCRIPT.read_text()

    key = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"
    assert ThumbnailStore.is_key(key)
    store = ThumbnailStore(tmp_path)
    store.put(key, b"RIFF\x00\x00\x00\x00WEBPVP8 ")

    class Model:
        version = "test"

    # Thumbnails need read (or public reads): Kibana's browser tab shows them when it is
    # signed in on the web app (docs/DOCKER.md, "API keys").
    settings = Settings(thumbnail_dir=tmp_path, public_read=True)
    es_store = ImageStore(Elasticsearch("http://127.0.0.1:9"), settings.es_index)
    app = create_app(settings, embedder=Model(), store=es_store)
    client = app.test_client()
    response = client.get(template.replace("{{value}}", key).removeprefix(base))
    assert response.status_code == 200
    assert response.mimetype == "image/webp"
    # What the indexer stores in `thumbnail` is no URL the app serves.
    stored_ref = store.ref(key)
    assert client.get(template.replace("{{value}}.webp", stored_ref)
                      .removeprefix(base)).status_code == 404
    assert "/healthz" in {rule.rule for rule in app.url_map.iter_rules()}


# --- kibana/import.sh ------------------------------------------------------------------------


FAKE_CURL = r"""#!/usr/bin/env bash
# Records what import.sh asks of curl, then answers like Kibana.
printf '%s\n' "$@" > "$LOG_DIR/argv"
cat > "$LOG_DIR/config"
out=
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=$2; shift ;;
    --form) cp "${2#file=@}" "$LOG_DIR/upload.ndjson"; shift ;;
  esac
  shift
done
printf '{"successCount":3,"success":true,"successResults":[]}' > "$out"
printf 200
"""


def test_import_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    proc = subprocess.run([bash, "-n", str(IMPORT_SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert os.access(IMPORT_SCRIPT, os.X_OK), "kibana/import.sh must be executable"


def test_import_script_posts_to_the_import_api_without_showing_the_password(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    # A copy of the checkout's kibana/ with its own .env, and a curl that only records.
    (tmp_path / "kibana").mkdir()
    for path in (IMPORT_SCRIPT, SAVED_OBJECTS):
        shutil.copy(path, tmp_path / "kibana" / path.name)
    (tmp_path / ".env").write_text("ELASTIC_PASSWORD=from-dotenv-Pw1\nWEBAPP_PORT=8080\n")
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log_dir.mkdir()
    curl = bin_dir / "curl"
    curl.write_text(FAKE_CURL)
    curl.chmod(curl.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items()
           if k not in ("ELASTIC_PASSWORD", "KIBANA_URL", "KIBANA_PORT", "KIBANA_USER",
                        "WEBAPP_URL", "WEBAPP_PORT")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", LOG_DIR=str(log_dir))

    proc = subprocess.run([bash, str(tmp_path / "kibana" / "import.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from-dotenv-Pw1" not in proc.stdout + proc.stderr
    argv = (log_dir / "argv").read_text().splitlines()
    assert "from-dotenv-Pw1" not in " ".join(argv)
    assert (log_dir / "config").read_text() == 'user = "elastic:from-dotenv-Pw1"\n'
    assert "http://localhost:5601/api/saved_objects/_import?overwrite=true" in argv
    assert "kbn-xsrf: true" in argv
    uploaded = (log_dir / "upload.ndjson").read_text()
    assert "http://localhost:8080/thumbnails/{{value}}.webp" in uploaded
    assert "localhost:8000" not in uploaded
    assert [json.loads(line)["id"] for line in uploaded.splitlines()] == [
        json.loads(line)["id"] for line in SAVED_OBJECTS.read_text().splitlines()]


def test_import_script_refuses_without_a_password(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    (tmp_path / "kibana").mkdir()
    shutil.copy(IMPORT_SCRIPT, tmp_path / "kibana" / "import.sh")
    env = {k: v for k, v in os.environ.items() if k != "ELASTIC_PASSWORD"}
    proc = subprocess.run([bash, str(tmp_path / "kibana" / "import.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "ELASTIC_PASSWORD" in proc.stderr


# --- docs ------------------------------------------------------------------------------------


def test_docker_docs_give_the_commands():
    text = (ROOT / "docs" / "DOCKER.md").read_text()
    for command in ("cp .env.example .env", "docker compose up -d",
                    "docker compose --profile indexer run --rm indexer", "kibana/import.sh",
                    '"exclude_vectors": false', '"knn"', "http://localhost:8000",
                    "http://localhost:5601"):
        assert command in text, command


def test_the_stack_starts_with_keys_required(env_example):
    """Compose publishes the web app beyond `make serve`'s loopback: reads need a key, and
    docs/DOCKER.md says how to make the first admin key."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert services["webapp"]["environment"]["IMGSEARCH_PUBLIC_READ"] == (
        "${IMGSEARCH_PUBLIC_READ:-0}")
    assert env_example["IMGSEARCH_PUBLIC_READ"] == "0"
    docs = (ROOT / "docs" / "DOCKER.md").read_text()
    assert "run --rm indexer keys create --name admin --scope admin" in docs
