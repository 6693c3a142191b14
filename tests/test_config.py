"""The ini file: defaults, the shipped etc/mcp2p.ini, one-line errors, overrides, lookup."""

from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import re
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp2p import config as config_module
from mcp2p.config import (
    CONFIG_ENV,
    DEFAULT_LOCATIONS,
    SCHEMA,
    SECTIONS,
    Config,
    config_from_string,
    find_config,
    load_config,
    parse_override,
    parse_rate,
)
from mcp2p.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "etc" / "mcp2p.ini"
SOURCE = "test.ini"
ALL_OPTIONS = [(section, key) for section, options in SCHEMA.items() for key in options]
PATH_OPTIONS = {("node", "state_dir"), ("node", "plugins_dir"), ("share", "paths")}
PATH_OPTIONS |= {("fetching", "download_dirs")}


def parse(text: str, **kwargs: object) -> Config:
    return config_from_string(text, source=SOURCE, **kwargs)  # type: ignore[arg-type]


def error_of(text: str, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def one_option(section: str, key: str, value: str) -> str:
    return f"[{section}]\n{key} = {value}\n"


# -- defaults -------------------------------------------------------------------


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = parse("", base_dir=tmp_path)
    assert config.source == SOURCE
    assert config.base_dir == tmp_path.resolve()
    assert config.plugins == {}
    assert config.node.interface == ipaddress.IPv4Address("127.0.0.1")
    assert config.node.interface6 == ""
    assert config.node.state_dir == tmp_path.resolve() / "state"
    assert config.share.paths == (tmp_path.resolve() / "share",)
    assert config.share.piece_length == 1 << 20
    assert config.discovery.methods == ("query", "sap")
    assert config.discovery.query_groups == (
        ipaddress.ip_address("239.255.77.77"),
        ipaddress.ip_address("ff15::77"),
    )
    assert config.discovery.ring_schedule == (1, 2, 3, 4, 6, 8, 16, 32)
    assert config.discovery.ring_timeout == 0.3
    assert config.discovery.answers_wanted == 3
    assert config.discovery.reply_mode == "unicast"
    assert (config.discovery.reply_delay_min, config.discovery.reply_delay_max) == (0.02, 0.12)
    assert config.sap.group == ipaddress.ip_address("239.255.255.255")
    assert config.sap.group6 == ipaddress.ip_address("ff15::2:7ffe")
    assert config.serving.group_mode == "ssm"
    assert config.serving.ssm_pool == (
        ipaddress.ip_network("232.0.0.0/8"),
        ipaddress.ip_network("ff3e::/32"),
    )
    assert config.serving.rate == 100_000_000
    assert config.serving.dscp == 8  # cs1
    assert config.fetching.download_dirs == (tmp_path.resolve() / "downloads",)
    assert config.api.port == 7780
    assert config.node.log_level == "info"


def test_default_base_dir_is_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse("").node.state_dir == tmp_path.resolve() / "state"


@pytest.mark.parametrize(("section", "key"), ALL_OPTIONS)
def test_every_default_is_valid(section: str, key: str, tmp_path: Path) -> None:
    option = SCHEMA[section][key]
    option.parse(option.default, tmp_path)
    assert option.help and "\n" not in option.help


def test_sections_are_attributes_and_config_is_frozen(tmp_path: Path) -> None:
    config = parse("", base_dir=tmp_path)
    for section in SCHEMA:
        assert getattr(config, section) is config.sections[section]
    with pytest.raises(AttributeError):
        _ = config.node.no_such_key
    with pytest.raises(AttributeError):
        config.source = "other"  # type: ignore[misc]


def test_the_package_exports_every_name_importers_use() -> None:
    """mcp2p.config is a package of one module per job; what mcp2p/config.py
    offered is still there under the same names, and nothing else is."""
    names = {
        *("CONFIG_ENV", "DEFAULT_LOCATIONS", "RENAMED", "SCHEMA", "SECTIONS", "UNIX_PATH_MAX"),
        *("Config", "ConfigError", "Option", "Parser", "IPAddress", "IPNetwork"),
        *("config_from_string", "find_config", "load_config", "parse_override", "parse_rate"),
        *(cls.__name__ for cls in SECTIONS.values()),
    }
    assert set(config_module.__all__) == names
    for name in names:
        assert getattr(config_module, name) is not None, name
    assert config_module.ConfigError is ConfigError


def test_each_section_dataclass_has_exactly_the_schema_keys() -> None:
    """A key added to SCHEMA without its field (or a field without its key) fails here."""
    assert list(SECTIONS) == list(SCHEMA)
    for section, options in SCHEMA.items():
        fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
        assert fields == list(options), section


@pytest.mark.parametrize(("section", "key"), ALL_OPTIONS)
def test_a_plain_field_has_the_type_its_parser_returns(
    section: str, key: str, tmp_path: Path
) -> None:
    """Fields typed int, float, bool, str or Path hold exactly that for the default."""
    hint = typing.get_type_hints(SECTIONS[section], localns={"Endpoint": object})[key]
    value = getattr(getattr(parse("", base_dir=tmp_path), section), key)
    if hint is Path:
        assert isinstance(value, Path)
    elif hint in (int, float, bool, str):
        assert type(value) is hint, (section, key, value)


def mypy_errors(tmp_path: Path, line: str) -> str:  # empty when mypy passes
    """mypy's complaints about a two-line program that reads a config option."""
    api = pytest.importorskip("mypy.api")
    program = tmp_path / "snippet.py"
    program.write_text(f"from mcp2p.config import config_from_string\n{line}\n")
    out, err, status = api.run(
        [
            f"--config-file={REPO / 'pyproject.toml'}",
            f"--cache-dir={tmp_path / 'mypy-cache'}",  # cold once (seconds), then warm
            str(program),
        ]
    )
    assert status in (0, 1), err
    return "" if status == 0 else out


def test_mypy_refuses_a_misspelt_option(tmp_path: Path) -> None:
    out = mypy_errors(tmp_path, 'config_from_string("").discovery.ring_timout')
    assert 'has no attribute "ring_timout"' in out
    assert mypy_errors(tmp_path, 'config_from_string("").discovery.ring_timeout + 1') == ""


# -- the shipped etc/mcp2p.ini ---------------------------------------------------


def test_shipped_file_parses() -> None:
    config = load_config(SHIPPED)
    assert config.source == str(SHIPPED)
    assert config.base_dir == SHIPPED.parent.resolve()
    assert config.plugins == {}
    # Its paths point at the top of the checkout, as its header says.
    assert config.node.state_dir.resolve() == REPO / "state"
    assert config.share.paths[0].resolve() == REPO / "share"
    assert [d.resolve() for d in config.fetching.download_dirs] == [REPO / "downloads"]


def _shipped_raw() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SHIPPED, encoding="utf-8")
    return parser


def test_shipped_file_lists_exactly_the_schema() -> None:
    parser = _shipped_raw()
    assert parser.sections() == list(SCHEMA)
    for section, options in SCHEMA.items():
        assert list(parser[section]) == list(options), section


@pytest.mark.parametrize(("section", "key"), ALL_OPTIONS)
def test_shipped_file_documents_each_option(section: str, key: str) -> None:
    """Each key has a comment above it carrying the schema's help line."""
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    header = lines.index(f"[{section}]")
    end = next((i for i in range(header + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    where = [i for i in range(header + 1, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])]
    assert len(where) == 1, f"[{section}] {key} should appear once in {SHIPPED}"
    comment = []
    i = where[0] - 1
    while i > header and lines[i].startswith("#"):
        comment.insert(0, lines[i].lstrip("# ").strip())
        i -= 1
    assert comment, f"[{section}] {key} has no comment"
    help_text = SCHEMA[section][key].help.lower().rstrip(".")
    assert help_text in " ".join(comment).lower()


@pytest.mark.parametrize(("section", "key"), ALL_OPTIONS)
def test_shipped_values_are_the_defaults(section: str, key: str, tmp_path: Path) -> None:
    if (section, key) in PATH_OPTIONS:
        pytest.skip("paths differ on purpose (the checkout keeps its state at the top)")
    option = SCHEMA[section][key]
    shipped = _shipped_raw()[section][key]
    assert option.parse(shipped, tmp_path) == option.parse(option.default, tmp_path)


# -- errors: one line naming file, section, key and value -----------------------------


def test_unknown_section() -> None:
    message = error_of("[nodes]\nstate_dir = x\n")
    assert message.startswith(f"{SOURCE}: ")
    assert "[nodes]" in message
    assert "[node]" in message and "[plugin:NAME]" in message  # what is allowed


def test_empty_plugin_name_is_an_unknown_section() -> None:
    assert "[plugin:]" in error_of("[plugin:]\nx = 1\n")


def test_unknown_key() -> None:
    message = error_of("[node]\nstate_dirs = /var/lib/x\n")
    assert message.startswith(f"{SOURCE}: ")
    assert "[node]" in message and "state_dirs" in message and "/var/lib/x" in message
    assert "state_dir" in message.split("expected", 1)[1]


def test_keys_are_case_sensitive() -> None:
    assert "State_Dir" in error_of("[node]\nState_Dir = x\n")


BAD_VALUES = [
    ("node", "interface", "224.0.0.1"),
    ("node", "interface", "0.0.0.0"),
    ("node", "interface", "eth0"),
    ("node", "interface", "::1"),
    ("node", "interface6", "a-very-long-interface-name"),
    ("node", "interface6", "eth 0"),
    ("node", "log_level", "verbose"),
    ("node", "log_level", "warning"),
    ("node", "log_level", ""),
    ("node", "log_level", "info, debug"),
    ("share", "piece_length", "3M"),
    ("share", "piece_length", "8K"),
    ("share", "piece_length", "512M"),
    ("share", "piece_length", "lots"),
    ("share", "rescan_interval", "0.5"),
    ("share", "rescan_interval", "nan"),
    ("share", "rescan_interval", "inf"),
    ("discovery", "methods", "dns"),
    ("discovery", "methods", "query, query"),
    ("discovery", "query_groups", "239.1.1.1, 10.0.0.1"),
    ("discovery", "query_groups", "not-an-address"),
    ("discovery", "query_port", "0"),
    ("discovery", "query_port", "65536"),
    ("discovery", "query_port", "seven"),
    ("discovery", "ring_schedule", "1, 1, 2"),
    ("discovery", "ring_schedule", "0, 1"),
    ("discovery", "ring_timeout", "0.01"),
    ("discovery", "answers_wanted", "0"),
    ("discovery", "reply_mode", "broadcast"),
    ("discovery", "reply_delay_min", "-1"),
    ("discovery", "answer_rate", "0"),
    ("discovery", "answer_burst", "1.5"),
    ("discovery", "query_padding", "1201"),
    ("sap", "group", "239.1.1.1, 239.1.1.2"),
    ("sap", "group6", "fe80::1"),
    ("sap", "ttl", "256"),
    ("sap", "bandwidth_limit", "99"),
    ("sap", "min_interval", "0"),
    ("sap", "cache_timeout", "-5"),
    ("serving", "group_mode", "both"),
    ("serving", "ssm_pool", "239.0.0.0/8"),
    ("serving", "asm_pool", "10.0.0.0/8"),
    ("serving", "data_port", "-1"),
    ("serving", "control_port", "70000"),
    ("serving", "rate", "fast"),
    ("serving", "block_length", "100"),
    ("serving", "dscp", "af11"),
    ("fetching", "sources", "65"),
    ("api", "port", "http"),
]


@pytest.mark.parametrize(
    ("raw", "level"),
    [("debug", "debug"), ("info", "info"), (" WARN ", "warn"), ("Error", "error")]
    + [("critical", "critical")],
)
def test_log_level(raw: str, level: str) -> None:
    assert parse(one_option("node", "log_level", raw)).node.log_level == level


def test_bad_log_level_says_what_is_allowed() -> None:
    message = error_of(one_option("node", "log_level", "loud"))
    assert message == (
        f"{SOURCE}: [node] log_level = 'loud': expected one of debug, info, warn, error, critical"
    )


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_value(section: str, key: str, value: str) -> None:
    message = error_of(one_option(section, key, value))
    assert message.startswith(f"{SOURCE}: [{section}] {key} = {value!r}: expected ")
    assert len(message.split("expected ", 1)[1]) > 5  # says what is allowed


def test_bad_multiline_value_is_still_one_line() -> None:
    message = error_of("[discovery]\nring_timeout = 1\n  2\n")
    assert "[discovery] ring_timeout" in message and "'1\\n2'" in message


@pytest.mark.parametrize(
    "text",
    [
        "state_dir = x\n",  # no section header
        "[node]\nstate_dir = a\nstate_dir = b\n",  # duplicate key
        "[node]\n[node]\n",  # duplicate section
        "[node]\nthis line has no equals sign\n",
    ],
)
def test_syntax_errors_are_one_line_config_errors(text: str) -> None:
    assert error_of(text).startswith(f"{SOURCE}: ")


@given(
    option=st.sampled_from(ALL_OPTIONS),
    value=st.text(st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"]), max_size=30).map(
        str.strip
    ),
)
def test_any_value_parses_or_fails_in_one_line(option: tuple[str, str], value: str) -> None:
    """Whatever an operator writes, the result is a Config or a one-line ConfigError."""
    section, key = option
    try:
        config = parse(one_option(section, key, value), base_dir=Path("/tmp"))
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
        assert message.startswith(f"{SOURCE}: [{section}] ")
        if key in message:
            assert repr(value) in message or section == "discovery"
    else:
        assert isinstance(config, Config)


# -- relative paths ------------------------------------------------------------


def test_relative_paths_resolve_against_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    ini = etc / "node.ini"
    ini.write_text(
        "[node]\nstate_dir = ../state\nplugins_dir = /opt/plugins\n"
        "[share]\npaths = music, ../video\n  /srv/files\n"
        "[fetching]\ndownload_dirs = ~/dl\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../etc/node.ini"))
    assert config.base_dir == etc
    assert config.node.state_dir.resolve() == tmp_path / "state"
    assert config.node.plugins_dir == Path("/opt/plugins")
    assert [p.resolve() for p in config.share.paths] == [
        etc / "music",
        tmp_path / "video",
        Path("/srv/files"),
    ]
    assert config.fetching.download_dirs == (tmp_path / "home" / "dl",)


def test_default_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    ini = tmp_path / "x.ini"
    ini.write_text("", encoding="utf-8")
    config = load_config(ini)
    assert config.node.state_dir == tmp_path.resolve() / "state"
    assert config.node.plugins_dir == tmp_path.resolve() / "plugins"


def test_empty_path_is_an_error() -> None:
    assert "[node] state_dir = ''" in error_of("[node]\nstate_dir =\n")


def test_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.ini: cannot read config"):
        load_config(tmp_path / "missing.ini")
    binary = tmp_path / "binary.ini"
    binary.write_bytes(b"[node]\nstate_dir = \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert "binary.ini" in str(info.value) and "\n" not in str(info.value)


# -- overrides -----------------------------------------------------------------


def test_parse_override() -> None:
    assert parse_override("discovery.ring_timeout=0.5") == ("discovery", "ring_timeout", "0.5")
    assert parse_override("node.state_dir=a=b") == ("node", "state_dir", "a=b")
    assert parse_override("node.interface6=") == ("node", "interface6", "")


@pytest.mark.parametrize(
    "text", ["ring_timeout=0.5", "discovery.ring_timeout", "=1", "Discovery.x=1", "a.b.c=1", ""]
)
def test_bad_override_syntax(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_override(text)
    assert str(info.value).startswith("command line: ")
    assert "SECTION.KEY=VALUE" in str(info.value)


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    ini = tmp_path / "x.ini"
    ini.write_text("[discovery]\nring_timeout = 0.5\nanswers_wanted = 4\n", encoding="utf-8")
    overrides = [parse_override("discovery.ring_timeout=2"), ("serving", "dscp", "ef")]
    config = load_config(ini, overrides=overrides)
    assert config.discovery.ring_timeout == 2.0
    assert config.discovery.answers_wanted == 4  # from the file
    assert config.serving.dscp == 46
    # The last override of one option wins.
    config = parse("", overrides=[("api", "port", "1"), ("api", "port", "2")])
    assert config.api.port == 2


def test_bad_override_value_names_the_command_line() -> None:
    message = error_of(
        "[discovery]\nring_timeout = 0.5\n", overrides=[("discovery", "ring_timeout", "soon")]
    )
    assert message.startswith("command line: [discovery] ring_timeout = 'soon': expected ")
    assert SOURCE not in message


@pytest.mark.parametrize(
    "override", [("discovery", "nope", "1"), ("nope", "ring_timeout", "1"), ("plugin:x", "a", "1")]
)
def test_unknown_override(override: tuple[str, str, str]) -> None:
    message = error_of("", overrides=[override])
    assert message.startswith("command line: unknown option ")
    assert f"{override[0]}.{override[1]}" in message


def test_bad_default_is_reported_as_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken schema default says so rather than blaming the file."""
    option = SCHEMA["api"]["port"]
    monkeypatch.setitem(SCHEMA["api"], "port", config_module.Option(option.parse, "x", "h"))
    assert error_of("").startswith(f"{SOURCE} (default): [api] port = 'x'")


# -- cross-option rules ------------------------------------------------------------


def test_reply_delay_max_below_min() -> None:
    message = error_of("[discovery]\nreply_delay_min = 0.1\nreply_delay_max = 0.05\n")
    assert message.startswith(f"{SOURCE}: [discovery] reply_delay_max = '0.05'")
    assert "reply_delay_min (0.1)" in message


def test_reply_delay_min_equal_max_is_fine() -> None:
    config = parse("[discovery]\nreply_delay_min = 0.05\nreply_delay_max = 0.05\n")
    assert config.discovery.reply_delay_min == config.discovery.reply_delay_max


@pytest.mark.parametrize("timeout", ["0.12", "0.1"])
def test_ring_timeout_must_exceed_reply_delay_max(timeout: str) -> None:
    message = error_of(f"[discovery]\nring_timeout = {timeout}\nreply_delay_max = 0.12\n")
    assert message.startswith(f"{SOURCE}: [discovery] ring_timeout = ")
    assert timeout in message and "reply_delay_max (0.12)" in message


def test_ring_timeout_just_above_reply_delay_max_is_fine() -> None:
    parse("[discovery]\nring_timeout = 0.13\nreply_delay_max = 0.12\n")


def test_cross_rule_broken_by_an_override_names_the_command_line() -> None:
    message = error_of("", overrides=[("discovery", "reply_delay_max", "0.5")])
    assert message.startswith("command line: [discovery] ring_timeout = ")
    message = error_of("", overrides=[("discovery", "reply_delay_min", "0.2")])
    assert message.startswith("command line: [discovery] reply_delay_max = ")
    # An override can also repair what the file broke.
    parse("[discovery]\nring_timeout = 0.1\n", overrides=[("discovery", "ring_timeout", "1")])


# -- value parsers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("8000", 8000),
        ("100M", 100_000_000),
        ("100m", 100_000_000),
        ("1.5M", 1_500_000),
        ("10kbit/s", 10_000),
        ("10 kbps", 10_000),
        ("2Gb", 2_000_000_000),
        ("1000G", 10**12),
    ],
)
def test_rate(raw: str, value: int) -> None:
    assert parse_rate(raw) == value
    assert parse(one_option("serving", "rate", raw)).serving.rate == value


@pytest.mark.parametrize(
    "raw", ["7999", "1.5k", "1001G", "-100M", "fast", "", "100 T", "1e9", "9" * 400, "1.5.5M"]
)
def test_bad_rate(raw: str) -> None:
    with pytest.raises(ValueError, match="at least 8000"):
        parse_rate(raw)


@given(st.integers(8000, 10**12))
def test_rate_plain_integers_round_trip(n: int) -> None:
    assert parse_rate(str(n)) == n


@pytest.mark.parametrize(
    ("raw", "value"),
    [("16K", 1 << 14), ("16384", 1 << 14), ("1M", 1 << 20), ("1MiB", 1 << 20), ("1mb", 1 << 20)]
    + [("256M", 1 << 28), (" 64 K ", 1 << 16)],
)
def test_piece_length(raw: str, value: int) -> None:
    assert parse(one_option("share", "piece_length", raw)).share.piece_length == value


@given(st.integers(0, 1 << 29))
def test_piece_length_is_a_power_of_two_in_range(n: int) -> None:
    ok = (1 << 14) <= n <= (1 << 28) and n & (n - 1) == 0
    try:
        assert parse(one_option("share", "piece_length", str(n))).share.piece_length == n
    except ConfigError as e:
        assert not ok, e
        assert "a power of two" in str(e)
    else:
        assert ok


@pytest.mark.parametrize(
    ("raw", "value"),
    [(f"cs{i}", 8 * i) for i in range(8)]
    + [("CS1", 8), ("le", 1), ("ef", 46), ("be", 0), ("0", 0), ("63", 63), ("0x2e", 46)],
)
def test_dscp(raw: str, value: int) -> None:
    assert parse(one_option("serving", "dscp", raw)).serving.dscp == value


@pytest.mark.parametrize("raw", ["64", "-1", "cs8", "af11", "", "0x40"])
def test_bad_dscp(raw: str) -> None:
    assert "a DSCP name" in error_of(one_option("serving", "dscp", raw))


@pytest.mark.parametrize(
    "raw",
    [
        "232.0.0.0/8",
        "232.1.0.0/16",
        "232.1.2.0/31",
        "ff3e::/32",
        "ff35::/32",
        "ff3e::/96",
        "ff3e:0:1::/48",
        "232.0.0.0/8, ff3e::/32",
        "232.1.0.0/16 232.2.0.0/16",
    ],
)
def test_ssm_pool(raw: str) -> None:
    pools = parse(one_option("serving", "ssm_pool", raw)).serving.ssm_pool
    assert pools == tuple(ipaddress.ip_network(n) for n in re.split(r"[,\s]+", raw))


@pytest.mark.parametrize(
    "raw",
    [
        "239.0.0.0/8",  # ASM
        "224.0.0.0/4",  # covers 232/8 but more
        "232.0.0.0/7",  # 232/8 and 233/8 (GLOP)
        "232.1.2.3/32",  # one address
        "232.0.0.1/8",  # host bits set
        "10.0.0.0/8",
        "ff3e::/16",  # covers ff3e:1:: which is not SSM
        "ff30::/12",
        "ff1e::/32",  # transient flag without P and T
        "ff3e:1::/32",  # non-zero prefix length field
        "ff3e::/128",
        "",
        "232.0.0.0/8, 239.0.0.0/8",
    ],
)
def test_bad_ssm_pool(raw: str) -> None:
    message = error_of(one_option("serving", "ssm_pool", raw))
    assert "SSM (232.0.0.0/8, ff3x::/32)" in message


@pytest.mark.parametrize("raw", ["239.192.0.0/14", "ff15::/16", "224.0.0.0/4, ff05::/16"])
def test_asm_pool(raw: str) -> None:
    parse(one_option("serving", "asm_pool", raw))


@pytest.mark.parametrize("raw", ["10.0.0.0/8", "239.1.1.1/32", "239.1.1.1", "fe80::/10", "x"])
def test_bad_asm_pool(raw: str) -> None:
    assert "multicast networks" in error_of(one_option("serving", "asm_pool", raw))


@given(st.lists(st.integers(-1, 260), max_size=10))
def test_ring_schedule_must_strictly_increase(rings: list[int]) -> None:
    raw = ", ".join(map(str, rings))
    ok = bool(rings) and all(1 <= r <= 255 for r in rings)
    ok = ok and all(b > a for a, b in zip(rings, rings[1:], strict=False))
    try:
        config = parse(one_option("discovery", "ring_schedule", raw))
    except ConfigError as e:
        assert not ok, e
        assert "strictly increasing" in str(e)
    else:
        assert ok
        assert config.discovery.ring_schedule == tuple(rings)


@pytest.mark.parametrize("raw", ["1 2 4", "1,2,4", " 1 ,\t2 , 4 "])
def test_ring_schedule_separators(raw: str) -> None:
    assert parse(one_option("discovery", "ring_schedule", raw)).discovery.ring_schedule == (1, 2, 4)


def test_methods_and_groups() -> None:
    config = parse("[discovery]\nmethods = SAP\nquery_groups = ff15::1\n")
    assert config.discovery.methods == ("sap",)
    assert config.discovery.query_groups == (ipaddress.ip_address("ff15::1"),)


@pytest.mark.parametrize(("raw", "value"), [("eth0", "eth0"), ("", ""), ("enp0s31f6", "enp0s31f6")])
def test_interface6(raw: str, value: str) -> None:
    assert parse(one_option("node", "interface6", raw)).node.interface6 == value


# -- plugin sections ---------------------------------------------------------------


def test_plugin_sections_are_passed_through() -> None:
    config = parse("[plugin:stats]\nInterval = 10\nurl = http://x/?a=b;c\n[plugin:other]\n[node]\n")
    assert config.plugins == {"stats": {"Interval": "10", "url": "http://x/?a=b;c"}, "other": {}}


# -- find_config ----------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("", encoding="utf-8")
    return path


def test_find_config_explicit_wins(workdir: Path) -> None:
    explicit = _touch(workdir / "mine.ini")
    env = _touch(workdir / "env.ini")
    _touch(workdir / "mcp2p.ini")
    assert find_config(str(explicit), {CONFIG_ENV: str(env)}) == explicit


def test_find_config_explicit_missing(workdir: Path) -> None:
    _touch(workdir / "mcp2p.ini")
    with pytest.raises(ConfigError, match=r"^nope\.ini: config file not found \(named by --config"):
        find_config("nope.ini", {})
    (workdir / "adir").mkdir()
    with pytest.raises(ConfigError, match="named by --config"):
        find_config("adir", {})


def test_find_config_environment(workdir: Path) -> None:
    env = _touch(workdir / "env.ini")
    _touch(workdir / "mcp2p.ini")
    assert find_config(None, {CONFIG_ENV: str(env)}) == env


def test_find_config_environment_missing(workdir: Path) -> None:
    _touch(workdir / "mcp2p.ini")
    with pytest.raises(ConfigError, match=r"gone\.ini: config file not found \(named by \$MCP2P"):
        find_config(None, {CONFIG_ENV: str(workdir / "gone.ini")})


def test_find_config_empty_environment_is_ignored(workdir: Path) -> None:
    _touch(workdir / "mcp2p.ini")
    assert find_config(None, {CONFIG_ENV: ""}) == Path("./mcp2p.ini")


def test_find_config_uses_os_environ(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _touch(workdir / "env.ini")
    monkeypatch.setenv(CONFIG_ENV, str(env))
    assert find_config() == env


def test_find_config_working_directory_before_etc(workdir: Path) -> None:
    _touch(workdir / "etc" / "mcp2p.ini")
    assert find_config(None, {}) == Path("./etc/mcp2p.ini")
    _touch(workdir / "mcp2p.ini")
    assert find_config(None, {}) == Path("./mcp2p.ini")


def test_find_config_nothing_found(workdir: Path) -> None:
    if any(Path(p).is_file() for p in DEFAULT_LOCATIONS):
        pytest.skip("a system-wide /etc/mcp2p/mcp2p.ini exists on this machine")
    with pytest.raises(ConfigError) as info:
        find_config(None, {})
    message = str(info.value)
    assert "\n" not in message and "--config" in message and CONFIG_ENV in message
    for location in DEFAULT_LOCATIONS:
        assert location in message


def test_shipped_file_is_found_from_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    if (REPO / "mcp2p.ini").is_file():
        pytest.skip("a mcp2p.ini at the top of the checkout shadows etc/mcp2p.ini")
    monkeypatch.chdir(REPO)
    found = find_config(None, {})
    assert found.resolve() == SHIPPED
    load_config(found)
