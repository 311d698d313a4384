"""docs/quickstart.md, followed to the letter: every command of its shell and Python blocks is exercised.

`auditlake` commands, `export`s, and local tools (openssl, cat, ls) run for real in a fresh folder,
against `auditlake emulator` in place of Microsoft (`AUDITLAKE_API_ROOT`, a static token). What cannot
run here is checked against what it names: `az` against the app registration Bicep, `sudo`/`systemctl`/
`journalctl` against deploy/local/auditlake-collect.service and its settings file, `podman` against
deploy/local/Containerfile; a command line of a service or a container must parse as `auditlake` does.
A command this file does not know fails the test: a new command in the doc needs a check here.
"""

from __future__ import annotations

import argparse
import asyncio
import configparser
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from auditlake.cli import build_parser
from function_app.config import SETTING_BY_NAME, Settings
from function_app.o365.auth import AuthKind, AzureIdentityTokenProvider, token_provider_from_env
from function_app.o365.clouds import Cloud
from tests.flows.conftest import BIN, REPO, RunningEmulator, collect_env, start_emulator

DOC = REPO / "docs" / "quickstart.md"
LOCAL = REPO / "deploy" / "local"
UNIT = LOCAL / "auditlake-collect.service"
ENV_FILE = LOCAL / "auditlake.env"
CONTAINERFILE = LOCAL / "Containerfile"
BICEP = REPO / "infra" / "modules" / "app-registration.bicep"

TENANT = "5c0f4d2e-7a1b-4c3d-9e8f-112233445566"
APP_ID = "0f1e2d3c-4b5a-4697-8877-665544332211"
IDENTITY_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
DOC_PORT = "8770"

# What token_provider_from_env reads: an `export` of one of these is part of a credential.
AUTH_VARIABLES = frozenset({
    "AUDITLAKE_API_TOKEN", "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AUDITLAKE_FEDERATED_MI",
    "AUDITLAKE_TOKEN_EXCHANGE_AUDIENCE", "MANAGED_IDENTITY_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_CLIENT_SECRET",
})
# Local tools whose lines run as written, in the working folder.
SHELL_TOOLS = frozenset({"openssl", "cat", "ls"})
AZ_COMMANDS = {
    ("login",), ("ad", "app", "create"), ("ad", "sp", "create"), ("ad", "app", "permission", "add"),
    ("ad", "app", "permission", "admin-consent"), ("ad", "app", "credential", "reset"),
}
READERS = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_ndjson_objects"}


# -- the doc ------------------------------------------------------------------------------------


@dataclass
class Block:
    lang: str
    line: int
    body: str


@dataclass
class Command:
    line: int
    text: str


def doc_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    body: list[str] = []
    lang: str | None = None
    start = 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1), n, []
        elif fence:
            blocks.append(Block(lang or "", start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{DOC}: a fenced block opened at line {start} is not closed"
    return blocks


def block_commands(block: Block) -> list[Command]:
    """The commands of a shell block: continuation lines joined, blank and comment lines left out."""
    commands: list[Command] = []
    pending: list[str] = []
    first = 0
    for n, raw in enumerate(block.body.splitlines(), block.line + 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            first = n
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        commands.append(Command(first, " ".join([*pending, line])))
        pending = []
    assert not pending, f"{DOC}:{first}: a continued line never ends"
    return commands


def placeholders(extra: dict[str, str]) -> dict[str, str]:
    return {"<tenant-id>": TENANT, "<application-id>": APP_ID, "<client-secret>": "not-a-real-secret",
            "<identity-client-id>": IDENTITY_ID, **extra}


def substitute(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


# -- the files the doc installs -----------------------------------------------------------------


def unit_file() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def env_file(path: Path = ENV_FILE) -> tuple[dict[str, str], list[str]]:
    """The settings file's assignments, and the names of the commented-out alternatives."""
    active: dict[str, str] = {}
    commented: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(#?)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m is None:
            assert not line.strip() or line.strip().startswith("#"), f"{path}: not NAME=value: {line!r}"
            continue
        if m.group(1):
            commented.append(m.group(2))
        else:
            active[m.group(2)] = m.group(3)
    return active, commented


def parses_as_auditlake(argv: list[str], where: str) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"{where}: `auditlake {shlex.join(argv)}` is refused by the CLI's parser") from exc


@dataclass(frozen=True)
class Service:
    """What the unit and its settings file say, for the doc's service commands to be checked against."""

    name: str
    user: str
    binary: Path
    argv: list[str]
    env_path: Path
    state_dir: Path
    settings: dict[str, str]

    @classmethod
    def read(cls) -> Service:
        service = unit_file()["Service"]
        exec_start = shlex.split(service["ExecStart"])
        settings, _ = env_file()
        return cls(UNIT.stem, service["User"], Path(exec_start[0]), exec_start[1:], Path(service["EnvironmentFile"]),
                   Path("/var/lib") / service["StateDirectory"], settings)

    @property
    def lake(self) -> Path:
        return Path(self.settings["AUDITLAKE_LAKE"])

    @property
    def certificate(self) -> Path:
        return Path(self.settings["AZURE_CLIENT_CERTIFICATE_PATH"])

    @property
    def venv(self) -> Path:
        return self.binary.parent.parent


# -- the walk ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Walk:
    """Follows the doc block by block in one folder, with one environment, as a reader's shell would."""

    emulator: RunningEmulator
    cwd: Path
    home: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    service: Service = field(default_factory=Service.read)
    background: list[subprocess.Popen[str]] = field(default_factory=list)
    venvs: set[str] = field(default_factory=set)
    installed: set[Path] = field(default_factory=set)
    service_stopped: bool = False
    kinds: set[AuthKind] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)
    image: str = ""
    container: str = ""

    def __post_init__(self) -> None:
        env = collect_env(AUDITLAKE_API_ROOT=self.emulator.api_root, HOME=str(self.home),
                          PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        for name in list(env):
            if name in AUTH_VARIABLES - {"AUDITLAKE_API_TOKEN"} or name in {"AUDITLAKE_LAKE", "AUDITLAKE_TENANTS",
                                                                            "AZURE_TENANT_ID", "VIRTUAL_ENV"}:
                del env[name]
        self.env = env
        self.values = placeholders({"<token-file>": str(self.cwd / "federated-token")})

    # Blocks

    def block(self, block: Block) -> None:
        if block.lang == "sh":
            exported: dict[str, str] = {}
            for command in block_commands(block):
                self.command(command, exported)
            self.credential(block, exported)
        elif block.lang == "python":
            self.python(block)
        else:
            # Output shown, a URL to open: nothing to run, and the doc must say which it is.
            assert block.lang == "text", f"{DOC}:{block.line}: ```{block.lang}: to run (sh) or not (text)?"

    def credential(self, block: Block, exported: dict[str, str]) -> None:
        """A block exporting credential variables must be a complete way of authenticating on its own."""
        chosen = {k: v for k, v in exported.items() if k in AUTH_VARIABLES}
        if not chosen:
            return
        assert "AUDITLAKE_API_TOKEN" not in chosen, f"{DOC}:{block.line}: the doc must not export a static token"
        try:
            provider = token_provider_from_env(chosen, Cloud("Enterprise"))
        except ValueError as exc:
            raise AssertionError(f"{DOC}:{block.line}: {sorted(chosen)} is not a complete credential: {exc}") from exc
        assert isinstance(provider, AzureIdentityTokenProvider)
        # Builds the credential: a certificate that is not a PEM with its private key fails here.
        provider.credential_for(TENANT)
        asyncio.run(provider.close())
        self.kinds.add(provider.kind)
        self.ran.append(f"{DOC.name}:{block.line}: credential {provider.kind.value}")

    def python(self, block: Block) -> None:
        assert self.background, f"{DOC}:{block.line}: a Python block runs while a collector serves the lake"
        code = block.body.replace(f"127.0.0.1:{DOC_PORT}", f"127.0.0.1:{self.port}")
        proc = subprocess.run([sys.executable, "-c", code], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, f"{DOC}:{block.line}: the Python block failed:\n{proc.stderr[-3000:]}"
        assert proc.stdout.strip(), f"{DOC}:{block.line}: the Python block printed nothing"
        self.ran.append(f"{DOC.name}:{block.line}: python (against the running collector)")

    # Commands

    def command(self, command: Command, exported: dict[str, str]) -> None:
        where = f"{DOC}:{command.line}"
        text = substitute(command.text, self.values)
        text = text.replace(f"--serve-port {DOC_PORT}", f"--serve-port {self.port}")
        words = shlex.split(text)
        sudo_user = None
        if words[0] == "sudo":
            words = words[1:]
            if words[:1] == ["-u"]:
                sudo_user, words = words[1], words[2:]
            self.sudo(words, sudo_user, where)
            self.ran.append(f"{where}: checked against the unit: {command.text}")
            return
        handlers: dict[str, Callable[[list[str], str], None]] = {
            "export": lambda w, _: self.export(w, exported, where),
            "auditlake": lambda w, _: self.auditlake(w, where),
            "az": self.az, "podman": self.podman, "journalctl": self.journalctl, "kill": self.kill,
            "python3.11": self.make_venv, ".": self.activate,
        }
        program = words[0]
        if program in SHELL_TOOLS:
            self.shell(text, where)
        elif program.endswith("/pip"):
            self.pip(words, where)
        elif program in handlers:
            handlers[program](words, where)
        else:
            raise AssertionError(f"{where}: `{command.text}` is not exercised by {Path(__file__).name}")
        self.ran.append(f"{where}: {command.text}")

    def expand(self, word: str) -> str:
        env = {**self.env, "PWD": str(self.cwd)}
        return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m.group(1) or m.group(2)], word)

    def export(self, words: list[str], exported: dict[str, str], where: str) -> None:
        assert len(words) == 2 and "=" in words[1], f"{where}: export NAME=value"
        name, value = words[1].split("=", 1)
        assert name in SETTING_BY_NAME, f"{where}: {name} is not a setting (function_app.config.SETTINGS)"
        value = self.expand(value)
        if name == "AZURE_FEDERATED_TOKEN_FILE":
            Path(value).write_text("a federated token\n")
        exported[name] = value
        # Credentials are applied too, as a shell would: the static token still wins (auth order 1).
        self.env[name] = value

    def shell(self, text: str, where: str) -> None:
        proc = subprocess.run(text, shell=True, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=120, executable="/bin/bash")
        assert proc.returncode == 0, f"{where}: `{text}` exited {proc.returncode}: {proc.stderr[-2000:]}"

    def auditlake(self, words: list[str], where: str) -> None:
        argv = [self.expand(w) for w in words[1:]]
        if argv[-1:] == ["&"]:
            self.start_background(argv[:-1], where)
            return
        parses_as_auditlake(argv, where)
        proc = subprocess.run([str(BIN / "auditlake"), *argv], cwd=self.cwd, env=self.env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, (f"{where}: `auditlake {shlex.join(argv)}` exited {proc.returncode}:\n"
                                      f"{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}")
        if argv[0] == "export":
            self.check_export(argv, parses_as_auditlake(argv, where), where)

    def lake_of(self, argv: list[str], args: argparse.Namespace) -> Path:
        """The lake a command uses: --lake, else AUDITLAKE_LAKE, else the default under the working folder."""
        given = args.lake if "--lake" in argv else None
        lake = Path(given or self.env.get("AUDITLAKE_LAKE") or ".auditlake/lake.duckdb")
        return lake if lake.is_absolute() else self.cwd / lake

    def start_background(self, argv: list[str], where: str) -> None:
        from auditlake.lake.serve import find_endpoint

        args = parses_as_auditlake(argv, where)
        assert argv[0] == "collect" and not args.once, f"{where}: only a long-running collect goes in the background"
        lake = self.lake_of(argv, args)
        proc = subprocess.Popen([str(BIN / "auditlake"), *argv], cwd=self.cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.background.append(proc)
        deadline = time.monotonic() + 120
        while find_endpoint(lake) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.communicate(timeout=10)[0] if proc.poll() is not None else "(still running)"
                raise AssertionError(f"{where}: the collector never served {lake}: {output[-3000:]}")
            time.sleep(0.2)
        assert find_endpoint(lake) == f"http://127.0.0.1:{self.port}", f"{where}: not serving on --serve-port"

    def kill(self, words: list[str], where: str) -> None:
        assert words == ["kill", "-INT", "%1"], f"{where}: only `kill -INT %1` (the collector started with &)"
        assert self.background, f"{where}: no job %1"
        proc = self.background.pop(0)
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 130, f"{where}: an interrupted collector exits 130, not {proc.returncode}: {output}"

    def check_export(self, argv: list[str], args: argparse.Namespace, where: str) -> None:
        lake = self.lake_of(argv, args)
        out = self.cwd / args.out
        con = duckdb.connect(str(lake), read_only=True)
        try:
            tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                                "WHERE table_schema = 'main'").fetchall()]
            wanted = args.table or tables
            counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchall()[0][0] for t in wanted}
        finally:
            con.close()
        assert {"AuditRecord", "ContentLedger", "CollectorRun", "Checkpoint"} <= set(tables)
        assert counts.get("AuditRecord", 1) > 0, f"{where}: the lake is empty: nothing was collected"
        reader = duckdb.connect()
        try:
            for table, expected in counts.items():
                path = out / f"{table}.{args.format}"
                assert path.is_file(), f"{where}: {path} was not written"
                if expected:
                    got = reader.execute(f"SELECT count(*) FROM {READERS[args.format]}('{path}')").fetchall()[0][0]
                    assert got == expected, f"{where}: {path} holds {got} rows, the lake {expected}"
        finally:
            reader.close()
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.{args.format}" for t in counts)

    # What cannot run here

    def make_venv(self, words: list[str], where: str) -> None:
        assert words[1:3] == ["-m", "venv"] and len(words) == 4, f"{where}: python3.11 -m venv DIR"
        assert 'requires-python = ">=3.11"' in (REPO / "pyproject.toml").read_text()
        self.venvs.add(words[3])

    def pip(self, words: list[str], where: str) -> None:
        venv = words[0].removesuffix("/bin/pip")
        assert venv in self.venvs, f"{where}: pip of a virtual environment the doc has not made: {venv}"
        assert words[1:] == ["install", ".[local]"], f"{where}: install this checkout with the local extra"
        assert re.search(r"^local = \[", (REPO / "pyproject.toml").read_text(), re.M), "pyproject has no local extra"

    def activate(self, words: list[str], where: str) -> None:
        venv = words[1].removesuffix("/bin/activate")
        assert venv in self.venvs, f"{where}: activates a virtual environment the doc has not made"
        # The test's own interpreter is that environment, installed the same way (make setup).
        assert (BIN / "auditlake").exists()

    def az(self, words: list[str], where: str) -> None:
        verb = next((v for v in sorted(AZ_COMMANDS, key=len, reverse=True) if tuple(words[1:1 + len(v)]) == v), None)
        assert verb is not None, f"{where}: `az {' '.join(words[1:4])}` is not a command this test knows"
        options = words[1 + len(verb):]
        if verb == ("ad", "app", "create"):
            audience = options[options.index("--sign-in-audience") + 1]
            assert audience in {"AzureADMyOrg", "AzureADMultipleOrgs"}, f"{where}: {audience}"
        if verb == ("ad", "app", "permission", "add"):
            bicep = BICEP.read_text(encoding="utf-8")

            def default(param: str) -> str:
                m = re.search(rf"param {param} string = '([0-9a-f-]+)'", bicep)
                assert m, f"{BICEP}: no default for {param}"
                return m.group(1)

            assert options[options.index("--api") + 1] == default("managementApiAppId")
            roles = options[options.index("--api-permissions") + 1:]
            wanted = ("activityFeedReadRoleId", "activityFeedReadDlpRoleId")
            assert roles == [f"{default(role)}=Role" for role in wanted]
        if verb == ("ad", "app", "credential", "reset"):
            assert "--append" in options, f"{where}: without --append the app's other credentials are deleted"
            if "--cert" in options:
                cert = options[options.index("--cert") + 1]
                assert cert.startswith("@") and (self.cwd / cert[1:]).is_file(), f"{where}: no file {cert}"

    def sudo(self, words: list[str], user: str | None, where: str) -> None:
        service = self.service
        program = words[0]
        if user is not None:
            assert user == service.user, f"{where}: sudo -u {user}, the unit runs as {service.user}"
            assert Path(words[0]) == service.binary, f"{where}: {words[0]} is not the unit's {service.binary}"
            args = parses_as_auditlake(words[1:], where)
            assert Path(args.lake) == service.lake, f"{where}: --lake {args.lake}, the service's is {service.lake}"
        elif program == "useradd":
            assert words[-1] == service.user and "--system" in words
            assert Path(words[words.index("--home-dir") + 1]) == service.state_dir
        elif program == "python3.11":
            self.make_venv(words, where)
            assert Path(words[3]) == service.venv, f"{where}: the unit runs {service.binary}"
        elif program.endswith("/pip"):
            self.pip(words, where)
        elif program == "install":
            self.install(words, where)
        elif program == "systemctl":
            self.systemctl(words, where)
        elif program == "cp":
            assert self.service_stopped, f"{where}: the lake is copied only while the collector is stopped"
            assert Path(words[1]) == service.lake and len(words) == 3
        else:
            raise AssertionError(f"{where}: `sudo {shlex.join(words)}` is not exercised by {Path(__file__).name}")

    def install(self, words: list[str], where: str) -> None:
        service = self.service

        def option(name: str) -> str | None:
            return words[words.index(name) + 1] if name in words else None

        # The settings and the certificate hold a credential: root's, readable by the service's group only.
        private = (option("-o"), option("-g"), option("-m")) == ("root", service.user, "0640")
        if "-d" in words:
            assert Path(words[-1]) == service.env_path.parent and option("-g") == service.user
            return
        source, dest = words[-2], Path(words[-1])
        targets = {service.env_path: (ENV_FILE, True), service.certificate: (self.cwd / "auditlake.pem", True),
                   Path("/etc/systemd/system") / UNIT.name: (UNIT, False)}
        assert dest in targets, f"{where}: installs {dest}, which neither the unit nor its settings name"
        expected_source, secret = targets[dest]
        made = REPO / source if (REPO / source).exists() else self.cwd / source
        assert made.resolve() == expected_source.resolve() and made.is_file(), f"{where}: {source} is not {dest}'s"
        assert private if secret else option("-m") == "0644", f"{where}: {dest} installed with the wrong mode"
        self.installed.add(dest)

    def systemctl(self, words: list[str], where: str) -> None:
        if words[1:] == ["daemon-reload"]:
            return
        assert words[-1] == self.service.name, f"{where}: the unit is {self.service.name}"
        assert self.installed >= {self.service.env_path, Path("/etc/systemd/system") / UNIT.name}
        verb = words[1]
        assert verb in {"enable", "start", "stop"}, f"{where}: systemctl {verb}"
        self.service_stopped = verb == "stop"

    def journalctl(self, words: list[str], where: str) -> None:
        assert words[words.index("-u") + 1] == self.service.name, f"{where}: the unit is {self.service.name}"

    def podman(self, words: list[str], where: str) -> None:
        service = self.service
        verb = words[1]
        if verb == "build":
            assert REPO / words[words.index("-f") + 1] == CONTAINERFILE and words[-1] == "."
            self.image = words[words.index("-t") + 1]
        elif verb == "run":
            options = words[2:]
            assert options[options.index("--env-file") + 1] == str(service.env_path)
            mounts = [options[i + 1] for i, w in enumerate(options) if w == "-v"]
            targets = {m.split(":")[1] for m in mounts}
            assert str(service.lake.parent) in targets, f"{where}: the lake's folder is not a volume"
            assert str(service.certificate) in targets, f"{where}: the certificate is not mounted"
            self.container = options[options.index("--name") + 1]
            assert options[-1] == self.image, f"{where}: runs {options[-1]}, not the image built ({self.image})"
            assert "--stop-timeout" in options
        elif verb == "exec":
            assert words[2] == self.container and words[3] == "auditlake"
            parses_as_auditlake(words[4:], where)
        else:
            raise AssertionError(f"{where}: podman {verb} is not exercised")

    def close(self) -> None:
        running = [p for p in self.background if p.poll() is None]
        for proc in self.background:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        assert not running, "the doc leaves a collector running in the background"


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    emulator = start_emulator("--tenant-id", TENANT, "--days", "2", "--records-per-day", "400")
    (tmp_path / "work").mkdir()
    (tmp_path / "home").mkdir()
    walker = Walk(emulator, tmp_path / "work", tmp_path / "home", free_port())
    try:
        yield walker
    finally:
        try:
            walker.close()
        finally:
            emulator.process.terminate()
            emulator.process.wait(timeout=10)


@pytest.mark.slow
def test_every_command_of_the_quickstart_works(walk: Walk) -> None:
    blocks = doc_blocks(DOC.read_text(encoding="utf-8"))
    for block in blocks:
        walk.block(block)
    walk.close()
    ran = "\n".join(walk.ran)
    # The steps a reader cannot skip, in the doc's order.
    for needed in ("auditlake collect --tenant-id <tenant-id> --once", "auditlake query", "auditlake export",
                   "auditlake demo", "kill -INT %1", "systemctl enable --now", "podman run"):
        assert needed in ran, f"the quickstart no longer has `{needed}`"
    assert walk.kinds == set(AuthKind), f"ways to authenticate the doc does not show: {set(AuthKind) - walk.kinds}"
    assert walk.installed == {walk.service.env_path, walk.service.certificate,
                              Path("/etc/systemd/system") / UNIT.name}


# -- the shipped files on their own (fast) ------------------------------------------------------


def test_every_command_of_the_quickstart_is_known(tmp_path: Path) -> None:
    """A command the walk cannot exercise fails here at once, without starting anything."""
    known = {"export", "auditlake", "az", "podman", "journalctl", "kill", "python3.11", ".", "sudo", *SHELL_TOOLS}
    blocks = doc_blocks(DOC.read_text(encoding="utf-8"))
    commands = [c for b in blocks if b.lang == "sh" for c in block_commands(b)]
    assert len(commands) > 30
    unknown = [f"{DOC}:{c.line}: {c.text}" for c in commands
               if c.text.split()[0] not in known and not c.text.split()[0].endswith("/pip")]
    assert not unknown, "commands no test exercises:\n" + "\n".join(unknown)
    assert {b.lang for b in blocks} <= {"sh", "python", "text"}


def test_the_unit_runs_the_collector_as_its_own_user_and_restarts_it() -> None:
    unit = unit_file()
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert exec_start[0].endswith("/bin/auditlake")
    args = parses_as_auditlake(exec_start[1:], str(UNIT))
    assert args.command == "collect" and not args.once and args.quiet
    assert service["User"] == service["Group"] == "auditlake"
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGINT" and "130" in service["SuccessExitStatus"].split()
    assert service["EnvironmentFile"] == "/etc/auditlake/auditlake.env"
    assert Path(service["WorkingDirectory"]) == Path("/var/lib") / service["StateDirectory"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_the_settings_file_names_only_settings_and_makes_a_collector() -> None:
    active, commented = env_file()
    unknown = [n for n in [*active, *commented] if n not in SETTING_BY_NAME]
    assert not unknown, f"{ENV_FILE}: not settings of function_app.config.SETTINGS: {unknown}"
    service = Service.read()
    assert service.lake.parent == service.state_dir, "the lake must be in the unit's StateDirectory"
    env = {k: substitute(v, placeholders({})) for k, v in active.items()}
    settings = Settings.from_env(env)
    assert [t.tenant_id for t in settings.tenants] == [TENANT]
    provider = token_provider_from_env(env, Cloud("Enterprise"))
    assert isinstance(provider, AzureIdentityTokenProvider) and provider.kind is AuthKind.CERTIFICATE


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = subprocess.run(["sh", "-c", "command -v systemd-analyze"], capture_output=True, text=True)
    if analyze.returncode != 0:
        pytest.skip("no systemd-analyze on this machine")
    # Verified with paths that exist here; systemd reports what it cannot parse as warnings naming the file.
    text = UNIT.read_text(encoding="utf-8").replace("/opt/auditlake/bin/auditlake", str(BIN / "auditlake"))
    text = text.replace("/etc/auditlake/auditlake.env", str(ENV_FILE))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    proc = subprocess.run([analyze.stdout.strip(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.name in line]
    assert proc.returncode == 0 and not complaints, "\n".join(complaints) or proc.stderr


def test_the_containerfile_installs_the_package_and_runs_the_collector() -> None:
    lines = [line.strip() for line in CONTAINERFILE.read_text(encoding="utf-8").splitlines()]
    instructions: dict[str, list[str]] = {}
    joined, pending = [], ""
    for line in lines:
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line.rstrip(chr(92))}" if pending else line.rstrip(chr(92))
        if not line.endswith("\\"):
            joined.append(pending.strip())
            pending = ""
    for instruction in joined:
        keyword, _, rest = instruction.partition(" ")
        instructions.setdefault(keyword, []).append(rest)
    assert instructions["FROM"] == ["python:3.11-slim"]
    for copy in instructions["COPY"]:
        *sources, _dest = copy.split()
        for source in sources:
            assert (REPO / source).exists(), f"{CONTAINERFILE}: COPY {source}: no such file in the repository"
    assert any("pip install" in run and "/src[local]" in run for run in instructions["RUN"])
    argv = json.loads(instructions["ENTRYPOINT"][0]) + json.loads(instructions["CMD"][0])
    assert argv[0] == "auditlake"
    args = parses_as_auditlake(argv[1:], str(CONTAINERFILE))
    assert args.command == "collect" and not args.once
    assert instructions["STOPSIGNAL"] == ["SIGINT"] and instructions["USER"] == ["auditlake"]
    assert instructions["VOLUME"] == [str(Service.read().lake.parent)]
