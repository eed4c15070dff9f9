"""``midgram call | which | help | shell | completion`` against the real midgram server.

Most cases run the command in-process (click's CliRunner: fast); exit statuses, Ctrl-C,
completion and the interactive shell run ``python -m midgram`` as a real process, the shell
on a pseudo-terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from datagrams import Sockets
from servers import ROOT, ServerProcess, midgram_server, short_tmpdir

from midgram.cli import cli

APP = ("--app", "apps:mi")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DEADLINE = 20.0
# `python -m midgram` with Ctrl-C restored: a shell starts background jobs with SIGINT
# ignored, and a child inherits that, so a test run from one could not interrupt anything.
INTERRUPTIBLE = (
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('midgram', run_name='__main__', alter_sys=True)",
)


@pytest.fixture
def env(folder: Path) -> dict[str, str]:
    """A clean environment: no target, private cache and history, no colour preference."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MIDGRAM_", "_MIDGRAM_"))}
    clean.pop("NO_COLOR", None)
    clean.update(
        XDG_CACHE_HOME=str(folder / "cache"),
        XDG_STATE_HOME=str(folder / "state"),
        PYTHONPATH=str(ROOT / "src"),
    )
    return clean


def invoke(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """``midgram ARGS`` in-process."""
    return CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)


def run(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m midgram ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "midgram", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )


@contextlib.contextmanager
def silent_peer(folder: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(folder / "silent.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield path, sock


# --- call: output formats -------------------------------------------------------------------


def test_default_output_in_a_pipe_is_compact_json(midgram: ServerProcess) -> None:
    result = invoke("call", "-t", midgram.target, "which", "log_level")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        '[[],["level"],["level","pid"]]\n',
        "",
    )


def test_format_json_pretty_yaml(midgram: ServerProcess) -> None:
    ps = json.loads(invoke("call", "-t", midgram.target, "ps", "-f", "json").stdout)
    assert {p["Type"] for p in ps["Processes"]} >= {"MI Datagram"}
    pretty = invoke("call", "-t", midgram.target, "ps", "-f", "pretty").stdout
    assert pretty.startswith('{\n  "Processes": [\n    {\n')
    assert "\x1b[" not in pretty  # no colour when not on a terminal
    assert json.loads(pretty)["Processes"][0].keys() == ps["Processes"][0].keys()
    text = invoke("call", "-t", midgram.target, "ps", "-f", "yaml").stdout
    assert "!!" not in text
    assert yaml.safe_load(text)["Processes"][0].keys() == ps["Processes"][0].keys()


def test_format_lines_and_table(midgram: ServerProcess) -> None:
    lines = invoke("call", "-t", midgram.target, "ps", "-f", "lines").stdout.splitlines()
    assert lines[0].startswith("Processes[0].ID: ")
    assert any(re.fullmatch(r"Processes\[\d+\]\.Type: MI Datagram", line) for line in lines)
    table = invoke("call", "-t", midgram.target, "ps", "-f", "table").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "Type"]
    assert set(table[1]) == {"-", " "}
    assert any(line.endswith("MI Datagram") for line in table[2:])
    names = invoke("call", "-t", midgram.target, "which", "-f", "lines").stdout.splitlines()
    assert "uptime" in names


def test_format_raw_is_the_reply_datagram(midgram: ServerProcess) -> None:
    result = invoke("call", "-t", midgram.target, "which", "uptime", "-f", "raw")
    assert re.fullmatch(r'\{"jsonrpc":"2\.0","result":\[\[\]\],"id":\d+\}\n', result.stdout)
    error = invoke("call", "-t", midgram.target, "no_such", "-f", "raw")
    assert error.exit_code == 1
    assert '"error":{"code":-32601,"message":"Method not found"}' in error.stdout


def test_yaml_without_pyyaml_is_a_usage_error(
    midgram: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "yaml" else real(name, *a)
    )
    result = invoke("call", "-t", midgram.target, "ps", "-f", "yaml")
    assert result.exit_code == 2
    assert "needs PyYAML" in result.stderr


# --- call: params ---------------------------------------------------------------------------


def test_named_positional_and_typed_params(midgram: ServerProcess) -> None:
    assert invoke("call", "-t", midgram.target, "big", "size=3").stdout == '"xxx"\n'
    assert invoke("call", "-t", midgram.target, "big", "size:=4").stdout == '"xxxx"\n'
    assert invoke("call", "-t", midgram.target, "big", ":=2").stdout == '"xx"\n'
    assert invoke("call", "-t", midgram.target, "big", "5").stdout == '"xxxxx"\n'
    stats = invoke("call", "-t", midgram.target, "get_statistics", 'statistics:=["core:"]')
    assert stats.exit_code == 0
    assert all(name.startswith("core:") for name in json.loads(stats.stdout))


def test_array_params_without_json(midgram: ServerProcess) -> None:
    """`which get_statistics` shows `statistics`; the forms a user tries next work (issue 10
    item 10)."""
    for words in (["statistics[]=all"], ["statistics=core:", "statistics=shmem:"]):
        result = invoke("call", "-t", midgram.target, "get_statistics", *words)
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)


def test_a_bad_type_hint_shows_the_form_that_works(
    midgram: ServerProcess, env: dict[str, str]
) -> None:
    failed = invoke("call", "-t", midgram.target, "get_statistics", "statistics=all")
    assert failed.exit_code == 1
    assert "midgram which" not in failed.stderr  # not back to `which`: it shows no types
    suggested = re.search(r"write ('statistics\[\]=all')", failed.stderr)
    assert suggested is not None, failed.stderr
    line = f"{sys.executable} -m midgram call -t {midgram.target} get_statistics {suggested[1]}"
    for shell in ("bash", "zsh") if shutil.which("zsh") else ("bash",):
        done = subprocess.run(
            [shell, "-c", line],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    number = invoke("call", "-t", midgram.target, "log_level", "level=x3")
    assert "level takes another type" not in number.stderr
    assert "if level takes an array, write 'level[]=x3'" in number.stderr
    typed = invoke("call", "-t", midgram.target, "log_level", "level:=[3]")
    assert "level takes another type: level=text sends a string" in typed.stderr


def test_json_params(midgram: ServerProcess) -> None:
    assert invoke("call", "-t", midgram.target, "-j", '{"size": 2}', "big").stdout == '"xx"\n'
    from_stdin = invoke("call", "-t", midgram.target, "-j", "-", "big", stdin="[3]")
    assert from_stdin.stdout == '"xxx"\n'


def test_dry_run_sends_nothing(folder: Path) -> None:
    result = invoke("call", "-t", str(folder / "none.sock"), "--dry-run", "log_level", "level:=-1")
    assert result.exit_code == 0
    assert re.fullmatch(
        r'\{"jsonrpc":"2\.0","method":"log_level","params":\{"level":-1\},"id":\d+\}\n',
        result.stdout,
    )


def test_verbose_shows_bytes_and_timing(midgram: ServerProcess) -> None:
    result = invoke("call", "-t", midgram.target, "-v", "which", "ps")
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert re.fullmatch(r"> \d+ bytes", lines[0])
    assert lines[1].startswith('{"jsonrpc":"2.0","method":"which","params":["ps"],"id":')
    assert re.fullmatch(r"< \d+ bytes in \d+\.\d\d ms", lines[2])
    assert lines[3].startswith('{"jsonrpc":"2.0","result":[[]],"id":')


# --- call: exit statuses and error lines ------------------------------------------------------


def test_exit_1_error_reply(midgram: ServerProcess) -> None:
    result = invoke("call", "-t", midgram.target, "ps", "x")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (
        "midgram: ps: error -32602: Invalid params (Too few or too many parameters): "
        "run `midgram which ps` for the parameters it takes\n"
    )
    too_big = invoke("call", "-t", midgram.target, "big", "size:=70000")
    assert too_big.exit_code == 1
    assert "replied '500 Internal error'" in too_big.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-t", "udp:127.0.0.1", "uptime"), "no port specified"),
        (("uptime", "a=1", "b"), "cannot be mixed"),
        (("uptime", "a:=nope"), "not valid JSON"),
        (("-j", "[1]", "uptime", "x"), "either as words or with --json"),
        (("--dialect", "kamailio", "core.echo", "a=1"), "positional parameters only"),
        (("-f", "xml", "uptime"), "'xml' is not one of"),
        (("--timeout", "0", "uptime"), "0"),
    ],
)
def test_exit_2_usage(args: tuple[str, ...], message: str) -> None:
    result = invoke("call", *args)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_a_request_too_large_to_send_is_a_usage_error(
    midgram: ServerProcess, kind: str, env: dict[str, str], sockets: Sockets
) -> None:
    """Refused by the client's own socket (EMSGSIZE): nothing reached the server, so not
    "the server answered with an error" (issue 10 item 15)."""
    target = f"udp:127.0.0.1:{sockets.unanswered()}" if kind == "udp" else midgram.target
    size = 70_000 if kind == "udp" else 8 << 20  # past any UNIX send buffer
    result = run("call", "-t", target, "-j", "-", "which", env=env, stdin=json.dumps(["x" * size]))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("midgram: the request (")
    assert f"is too large to send to {target} in one datagram" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args",
    [
        ("call", "-t", "udp:127.0.0.1", "uptime"),  # a bad target (our BadParameter)
        ("which", "--no-such-option"),  # click's own usage error
        ("nosuch",),  # no such sub-command
        ("which", "-f", "xml"),
        ("serve", "--children", "300"),  # a bad parameter
        ("completion", "tcsh"),
        ("bench", "--runs", "0"),
    ],
)
def test_every_error_has_the_one_prefix(args: tuple[str, ...], env: dict[str, str]) -> None:
    """`midgram:` everywhere, click's usage errors included (issue 10 item 15)."""
    result = run(*args, env=env)
    assert result.returncode == 2
    assert "Error:" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("midgram: "), result.stderr


def test_exit_3_no_reply(folder: Path, env: dict[str, str]) -> None:
    with silent_peer(folder) as (target, _):
        started = time.monotonic()
        result = run("call", "-t", target, "--timeout", "0.3", "uptime", env=env)
        assert time.monotonic() - started >= 0.3
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr == (
        f"midgram: no reply from {target} within 0.3 s: is the server busy or stuck? "
        "try a longer --timeout\n"
    )


@pytest.mark.parametrize("timeout", ["300ms", "0.3s", "0.3"])
def test_call_timeout_takes_units(folder: Path, timeout: str) -> None:
    """`serve --timeout` is ms and `call --timeout` seconds: both take a unit (issue 10
    item 15); a bare number keeps each one's unit."""
    with silent_peer(folder) as (target, _):
        result = invoke("call", "-t", target, "--timeout", timeout, "uptime")
    assert result.exit_code == 3
    assert f"no reply from {target} within 0.3 s" in result.stderr


def test_exit_4_cannot_reach(folder: Path, env: dict[str, str], sockets: Sockets) -> None:
    result = run("call", "-t", str(folder / "none.sock"), "uptime", env=env)
    assert (result.returncode, result.stdout) == (4, "")
    assert result.stderr == (
        f"midgram: no socket at {folder}/none.sock: is the server running? is the path right?\n"
    )
    refused = run("call", "-t", f"udp:127.0.0.1:{sockets.unanswered()}", "uptime", env=env)
    assert refused.returncode == 4
    assert "no server listens on" in refused.stderr


def test_each_unreachable_target_gets_its_own_true_message(
    folder: Path, env: dict[str, str]
) -> None:
    """Not "(the file is stale)" for everything that refuses (issue 10 item 11)."""
    (folder / "plain").write_text("not a socket")
    (folder / "sub").mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as left:
        left.bind(str(folder / "left.sock"))  # closed below, the file stays: a stopped server
    cases = {
        str(folder / "sub"): (4, f"{folder}/sub is a folder, not a socket"),
        str(folder / "plain"): (4, f"{folder}/plain is a regular file, not a socket"),
        "@midgram-nosuch": (4, "no server listens on the abstract socket @midgram-nosuch"),
        str(folder / "left.sock"): (4, "(the socket file was left by a server that stopped)"),
        "tcp:127.0.0.1:8080": (2, "speaks UDP and UNIX datagram sockets: write udp:127.0.0.1:8080"),
        "unix:/run/mi.sock": (2, "write the socket's path itself: /run/mi.sock"),
    }
    lines = set()
    for target, (status, message) in cases.items():
        result = run("call", "-t", target, "uptime", env=env)
        assert result.returncode == status, result.stderr
        assert message in result.stderr
        assert "stale" not in result.stderr
        lines.add(result.stderr)
    assert len(lines) == len(cases)


def test_exit_130_interrupted(folder: Path, env: dict[str, str]) -> None:
    with silent_peer(folder) as (target, peer):
        proc = subprocess.Popen(
            [*INTERRUPTIBLE, "call", "-t", target, "--timeout", "30", "uptime"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peer.settimeout(DEADLINE)
        peer.recv(65536)  # the request arrived: the client now waits for the reply
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    assert (proc.returncode, out, err) == (130, "", "midgram: interrupted\n")


def test_several_targets_worst_status_wins(midgram: ServerProcess, folder: Path) -> None:
    missing = str(folder / "none.sock")
    with silent_peer(folder) as (silent, _):
        result = invoke(
            "call",
            "-t",
            midgram.target,
            "-t",
            missing,
            "-t",
            silent,
            "--timeout",
            "0.3",
            "-f",
            "json",
            "big",
            ":=2",
        )
    assert result.exit_code == 4
    assert json.loads(result.stdout) == {
        midgram.target: {"status": "ok", "result": "xx"},
        missing: {
            "status": "unreachable",
            "error": f"cannot reach {missing}: No such file or directory",
        },
        silent: {"status": "timeout", "error": f"no reply from {silent} within 0.3 s"},
    }
    assert len(result.stderr.splitlines()) == 2


def test_several_targets_as_text(midgram: ServerProcess, folder: Path) -> None:
    missing = str(folder / "none.sock")
    result = invoke("call", "-t", midgram.target, "-t", missing, "-f", "lines", "big", ":=1")
    assert result.exit_code == 4
    assert result.stdout == f"== {midgram.target}: ok\nx\n== {missing}: unreachable\n"


def test_target_from_the_environment(midgram: ServerProcess) -> None:
    result = invoke("call", "big", ":=1", env={"MIDGRAM_TARGET": midgram.target})
    assert (result.exit_code, result.stdout) == (0, '"x"\n')


def test_default_target_is_the_servers_default_socket(env: dict[str, str]) -> None:
    runtime = short_tmpdir()
    try:
        with midgram_server(socket=f"{runtime}/midgram.sock"):
            result = run("call", "which", "uptime", env={**env, "XDG_RUNTIME_DIR": runtime})
        assert (result.returncode, result.stdout) == (0, "[[]]\n")
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_udp_v4_and_v6_targets() -> None:
    for host in ("127.0.0.1", "::1"):
        shown = f"[{host}]" if ":" in host else host
        with midgram_server(socket=f"udp:{shown}:0") as udp:
            result = invoke("call", "-t", udp.target, "which", "uptime")
            assert (result.exit_code, result.stdout) == (0, "[[]]\n")


# --- which, help ------------------------------------------------------------------------------


def test_which(midgram: ServerProcess) -> None:
    names = invoke("which", "-t", midgram.target)
    assert names.exit_code == 0
    assert {"uptime", "which", "help", "big"} <= set(names.stdout.splitlines())
    recipes = invoke("which", "-t", midgram.target, "log_level")
    assert recipes.stdout == "log_level\nlog_level level=…\nlog_level level=… pid=…\n"
    as_json = invoke("which", "-t", midgram.target, "log_level", "-f", "json")
    assert json.loads(as_json.stdout) == [[], ["level"], ["level", "pid"]]
    unknown = invoke("which", "-t", midgram.target, "no_such")
    assert unknown.exit_code == 1
    assert "404: unknown MI command" in unknown.stderr


def test_help(midgram: ServerProcess) -> None:
    result = invoke("help", "-t", midgram.target, "big")
    assert result.exit_code == 0
    assert result.stdout == (
        "big: a reply of about `size` bytes\nexported by: tests\nusage:\n  big size=…\n"
    )
    as_json = invoke("help", "-t", midgram.target, "uptime", "-f", "json")
    assert json.loads(as_json.stdout)["Exported by"] == "core"


@pytest.mark.parametrize("command", ["which", "help", "shell", "bench"])
def test_one_target_commands_say_so_and_refuse_a_second(command: str) -> None:
    """Their -t help said "Repeat it to call several servers", and a second was refused
    (issue 10 item 13): the help and the behaviour agree now."""
    text = " ".join(invoke(command, "--help").stdout.split())
    assert "Repeat it" not in text
    assert "One server (`midgram call` takes several)" in text
    args = ["uptime"] if command == "help" else []
    result = invoke(command, "-t", "/run/a.sock", "-t", "/run/b.sock", *args)
    assert result.exit_code == 2
    assert f"`midgram {command}` talks to one server, and got 2" in result.stderr


def test_call_takes_several_targets_and_says_so() -> None:
    assert "Repeat it to call several servers at once." in " ".join(
        invoke("call", "--help").stdout.split()
    )


def test_help_lists_the_exit_codes() -> None:
    text = invoke("call", "--help").stdout
    for line in ("0    ok", "3    no reply within --timeout", "130  interrupted"):
        assert line in text


# --- completion -------------------------------------------------------------------------------


def complete(words: str, env: dict[str, str]) -> list[str]:
    parts = words.split(" ")
    result = run(
        env={
            **env,
            "_MIDGRAM_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
        }
    )
    assert result.returncode == 0, result.stderr
    # bash_complete prints "type,value" lines (an empty line when there is nothing).
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_completion_of_command_and_parameter_names(
    midgram: ServerProcess, env: dict[str, str], folder: Path
) -> None:
    assert complete(f"midgram call -t {midgram.target} upt", env) == ["uptime"]
    assert complete(f"midgram call -t {midgram.target} log_level ", env) == ["level=", "pid="]
    assert complete(f"midgram call -t {midgram.target} log_level level=1 ", env) == ["pid="]
    assert complete(f"midgram which -t {midgram.target} log_l", env) == ["log_level"]
    assert list((folder / "cache" / "midgram").glob("catalog-*.json"))  # cached
    # Nothing to offer, and no error, when the server cannot be asked.
    assert complete(f"midgram call -t {folder}/none.sock upt", env) == []


def test_completion_scripts(env: dict[str, str]) -> None:
    for shell_name, marker in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        result = run("completion", shell_name, env=env)
        assert result.returncode == 0
        assert "_MIDGRAM_COMPLETE" in result.stdout
        assert marker in result.stdout
    assert run("completion", "tcsh", env=env).returncode == 2


def test_completion_cache_is_shared_and_expires(midgram: ServerProcess, folder: Path) -> None:
    from midgram.cli.complete import Catalog

    catalog = Catalog(midgram.target, directory=folder, ttl=60)
    assert "uptime" in catalog.methods()
    catalog.path.write_text(json.dumps({"methods": {"saved": time.time(), "value": ["cached"]}}))
    assert Catalog(midgram.target, directory=folder, ttl=60).methods() == ["cached"]
    assert "uptime" in Catalog(midgram.target, directory=folder, ttl=0).methods()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_a_catalog_another_user_wrote_is_not_trusted(
    midgram: ServerProcess, tmp_path: Path
) -> None:
    """Root completing with a user's XDG_CACHE_HOME (sudo -E) must not take that user's file
    for what the server said, nor write its own into the user's folder."""
    from midgram.cli.complete import Catalog

    nobody = 65534
    catalog = Catalog(midgram.target, directory=tmp_path, ttl=60)
    planted = {"methods": {"saved": time.time(), "value": ["planted"]}}
    catalog.path.write_text(json.dumps(planted))
    os.chown(catalog.path, nobody, nobody)
    assert "uptime" in catalog.methods()
    assert json.loads(catalog.path.read_text()) != planted  # replaced by this user's own
    assert catalog.path.stat().st_uid == os.geteuid()
    # Through a symbolic link to someone else's file: not followed.
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps(planted))
    catalog.path.unlink()
    catalog.path.symlink_to(theirs)
    assert Catalog(midgram.target, directory=tmp_path, ttl=60).methods() != ["planted"]
    # A folder of another owner is neither read nor written.
    folder = tmp_path / "users"
    folder.mkdir()
    os.chown(folder, nobody, nobody)
    assert "uptime" in Catalog(midgram.target, directory=folder, ttl=60).methods()
    assert list(folder.iterdir()) == []


def test_the_cache_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from midgram.cli.complete import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "midgram"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "midgram"


def test_the_cache_folder_is_private(midgram: ServerProcess, tmp_path: Path) -> None:
    from midgram.cli.complete import Catalog

    folder = tmp_path / "cache" / "midgram"
    assert "uptime" in Catalog(midgram.target, directory=folder).methods()
    assert folder.stat().st_mode & 0o777 == 0o700


# --- shell --------------------------------------------------------------------------------------


class Terminal:
    """A process on a pseudo-terminal: type keys, wait (with a deadline) for output."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        # No cursor-position requests: nobody on this terminal would answer them.
        env = {**env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
        self.proc = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.raw = b""
        self.seen = ""

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def _read(self, deadline: float) -> bool:
        """Read what is there; False once the process has closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process ended and closed the terminal
            return False
        self.raw += chunk
        self.seen += ANSI.sub("", chunk.decode(errors="replace"))
        return bool(chunk)

    def expect(self, text: str) -> None:
        """Wait until ``text`` appears (ANSI codes removed), and consume up to its end."""
        deadline = time.monotonic() + DEADLINE
        while text not in self.seen:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"no {text!r} on the terminal; it shows {self.seen!r}")
        self.seen = self.seen.partition(text)[2]

    def wait(self) -> int:
        """Read until the process closes the terminal; its exit status."""
        deadline = time.monotonic() + DEADLINE
        while self._read(deadline) and time.monotonic() < deadline:
            pass
        return self.proc.wait(DEADLINE)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def midgram_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "midgram", *args]


def test_shell_on_a_terminal(midgram: ServerProcess, env: dict[str, str], folder: Path) -> None:
    prompt = f"{midgram.target}>"
    with Terminal(midgram_command("shell", "-t", midgram.target), env) as term:
        term.expect(prompt)
        term.type("upti\t")  # TAB completes the command name from the live server
        term.expect("uptime")
        term.type("\r")
        term.expect('"Up since"')
        term.expect(prompt)
        term.type("which comm\t")  # ... and a parameter name
        term.expect("command=")
        term.type("log_level\r")
        term.expect('"pid"')
        term.expect(prompt)
        term.type("no_such\r")
        term.expect("Method not found")
        term.expect(prompt)
        term.type("\x04")  # Ctrl-D leaves
        assert term.wait() == 0
    history = (folder / "state" / "midgram" / "history").read_text()
    assert "uptime" in history
    assert "which command=log_level" in history


def test_pretty_output_is_coloured_on_a_terminal(
    midgram: ServerProcess, env: dict[str, str]
) -> None:
    with Terminal(midgram_command("call", "-t", midgram.target, "which"), env) as term:
        assert term.wait() == 0
    assert b"\x1b[32m" in term.raw  # the names, in green
    assert "uptime" in json.loads(term.seen)
    with Terminal(
        midgram_command("call", "-t", midgram.target, "which"), {**env, "NO_COLOR": "1"}
    ) as term:
        assert term.wait() == 0
    assert b"\x1b[" not in term.raw


def test_shell_raw_is_the_reply_datagram_both_ways(
    midgram: ServerProcess, env: dict[str, str]
) -> None:
    """`shell -f raw` printed JSON and `.format raw` was refused (issue 10 item 15): both
    print the reply datagram now, as `call -f raw` does."""
    raw = re.compile(
        r'\{"jsonrpc":"2\.0","result":\[\[\],\["level"\],\["level","pid"\]\],"id":\d+\}'
    )
    flag = run("shell", "-t", midgram.target, "-f", "raw", env=env, stdin="which log_level\n")
    command = run("shell", "-t", midgram.target, env=env, stdin=".format raw\nwhich log_level\n")
    for result in (flag, command):
        assert (result.returncode, result.stderr) == (0, "")
        assert raw.fullmatch(result.stdout.strip()), result.stdout
    error = run("shell", "-t", midgram.target, "-f", "raw", env=env, stdin="nope\n")
    assert '"error":{"code":-32601,"message":"Method not found"}' in error.stdout
    assert error.returncode == 1


def test_shell_reads_lines_from_a_pipe(midgram: ServerProcess, env: dict[str, str]) -> None:
    lines = "big :=2\n# a comment\n\n.format lines\nwhich log_level\nno_such\nbig 'a b'\n"
    result = run("shell", "-t", midgram.target, env=env, stdin=lines)
    assert result.returncode == 1  # the worst status of all the lines
    assert result.stdout == '"xx"\n[0]: []\n[1][0]: level\n[2][0]: level\n[2][1]: pid\n'
    assert result.stderr.splitlines() == [
        # What to type in the shell, not a midgram command (issue 10 item 15).
        "midgram: no_such: error -32601: Method not found: type `which` for the server's commands",
        "midgram: big: error -32602: Invalid params (Bad type for parameter 'size'): "
        "size takes another type: size=text sends a string, size[]=text an array, "
        "size:=5 a number",
    ]
