"""The one typed, frozen config object: defaults in code, then a YAML file, env and CLI overrides.

Precedence is defaults < file < environment (``STREAMEM_<SECTION>__<KEY>=value``) < command line
(``--set section.key=value``). Override values are parsed as YAML scalars, so ``null``, ``true`` and
numbers mean what they do in the file; secrets (passwords, tokens: see :func:`_is_secret`) are
taken as the literal string instead. Every value is checked once, here; a bad one raises
:class:`~streamem.errors.ConfigError` naming the dotted key, what was expected and where the value
came from. Secrets never appear in ``repr()``, ``str()``, :meth:`redacted` or an error message, and
no error message shows the value given for an unknown key.

>>> cfg = load_config(None, ["model.n_components=3", "kafka.client_id=42"], environ={})
>>> cfg.model.n_components, cfg.kafka.client_id, cfg.kafka.input_topic
(3, '42', 'streamem.points')
>>> load_config(None, ["kafka.bootstrap_server=h:1"], environ={})
Traceback (most recent call last):
...
streamem.errors.ConfigError: unknown key 'kafka.bootstrap_server' (did you mean \
'kafka.bootstrap_servers'?) (from --set kafka.bootstrap_server)
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from streamem.errors import ConfigError
from streamem.formats import INPUT_FORMATS, OUTPUT_FORMATS
from streamem.model.validation import PARAMETER_CONSTRAINTS, Options

Check = Callable[[Any], Any]  #: raw value -> validated value; raises _Invalid(expected)
Environ = Mapping[str, str]
ENV_PREFIX = "STREAMEM_"
MASK = "***"
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "credential",
                 "private_key", "api_key", "apikey")


class _Invalid(Exception):
    """A value failed its check; ``expected`` says what would have passed."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


# --- value checks: each returns the (normalised) value or raises _Invalid --------------------


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool = False,
                 hi_open: bool = False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    return " and ".join(parts)


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    expected = f"an integer {_bounds_text(lo, hi)}".strip()

    def check(v: Any) -> int:
        if type(v) is not int or (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(expected)
        return v

    return check


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            hi_open: bool = False) -> Check:
    """A finite float; numeric strings pass too, as PyYAML reads ``1e-6`` as a string."""
    expected = f"a number {_bounds_text(lo, hi, lo_open, hi_open)}".strip()

    def check(v: Any) -> float:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise _Invalid(expected) from None
        if type(v) not in (int, float) or not math.isfinite(v):
            raise _Invalid(expected)
        too_low = lo is not None and (v <= lo if lo_open else v < lo)
        too_high = hi is not None and (v >= hi if hi_open else v > hi)
        if too_low or too_high:
            raise _Invalid(expected)
        return float(v)

    return check


def _positive() -> Check:
    return _number(0.0, lo_open=True)


def _boolean(v: Any) -> bool:
    if type(v) is not bool:
        raise _Invalid("true or false")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _Invalid("a non-empty string")
    return v


def _choice(*options: str, upper: bool = False) -> Check:
    expected = "one of " + ", ".join(repr(o) for o in options)

    def check(v: Any) -> str:
        if isinstance(v, str) and (v.upper() if upper else v) in options:
            return v.upper() if upper else v
        raise _Invalid(expected)

    return check


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _topic(v: Any) -> str:
    if not isinstance(v, str) or not _TOPIC.fullmatch(v) or v in (".", ".."):
        raise _Invalid("a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -)")
    return v


def _servers(v: Any) -> str:
    """``"h:p[,h:p]"`` or a list of ``"h:p"``; normalised to one comma-separated string."""
    expected = "'host:port[,host:port...]' or a list of 'host:port'"
    items = v.split(",") if isinstance(v, str) else v
    if not isinstance(items, list) or not items:
        raise _Invalid(expected)
    out = []
    for item in items:
        host, sep, port = item.strip().rpartition(":") if isinstance(item, str) else ("", "", "")
        if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise _Invalid(expected)
        out.append(f"{host}:{int(port)}")
    return ",".join(out)


def _options(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _Invalid("a mapping of kafka-python option names to values")
    return dict(v)


def _client_keys(client: str) -> frozenset[str]:
    """The keyword arguments kafka-python's ``consumer``, ``producer`` or ``admin`` accepts."""
    import kafka

    cls = {"consumer": kafka.KafkaConsumer, "producer": kafka.KafkaProducer,
           "admin": kafka.KafkaAdminClient}[client]
    return frozenset(cls.DEFAULT_CONFIG)


KAFKA_PYTHON = "kafka-python"
CONFLUENT_KAFKA = "confluent-kafka"
"""The values of ``kafka.client``: the Kafka client library (librdkafka's is an extra)."""
CLIENTS = ("consumer", "producer", "admin")
#: The option maps: ``client_options`` goes to every client that accepts a key, the others to one.
OPTION_KEYS = ("client_options", *(f"{c}_options" for c in CLIENTS))


def _client_options(*clients: str) -> Check:
    """A mapping of options each of ``clients`` accepts (any of them, for several)."""
    expected = " or ".join(f"kafka-python {c}" for c in clients)

    def check(v: Any) -> dict[str, Any]:
        options = _options(v)
        known = frozenset().union(*(_client_keys(c) for c in clients))
        for key in options:
            if key not in known:
                raise _Invalid(f"options the {expected} accepts; {key!r} is not one"
                               f"{_suggest(key, sorted(known))}")
        return options

    return check


def _model(name: str) -> Check:
    """The check of hyperparameter ``name``, from the model's constraint table (config values
    are finite; None is the section's own ``null``, see :func:`_optional`)."""
    constraint = PARAMETER_CONSTRAINTS[name]
    if isinstance(constraint, Options):
        return _choice(*constraint.values)
    c = constraint
    if c.integer:
        assert not (c.lo_open or c.hi_open), "integer bounds are inclusive"
        return _integer(None if c.lo is None else int(c.lo), None if c.hi is None else int(c.hi))
    return _number(c.lo, c.hi, lo_open=c.lo_open, hi_open=c.hi_open)


def _rdkafka_options(key: str) -> Check:
    """``kafka.<key>`` with confluent-kafka: librdkafka properties its client(s) accept."""
    roles = {"client_options": ("consumer", "producer"), "consumer_options": ("consumer",),
             "producer_options": ("producer",)}.get(key)

    def check(v: Any) -> dict[str, Any]:
        options = _options(v)
        if roles is None:
            if not options:
                return options
            raise _Invalid(f"an empty mapping (no meaning with kafka.client={CONFLUENT_KAFKA})")
        try:
            from streamem.io.rdkafka import check_properties
        except ImportError:
            raise _Invalid("nothing without confluent-kafka installed "
                           "(pip install 'streamem[rdkafka]')") from None
        for role in roles:
            refused = check_properties(role, options)
            if refused is not None:
                raise _Invalid(f"librdkafka {role} properties; {refused}")
        return options

    return check


def _optional(check: Check) -> Check:
    def optional(v: Any) -> Any:
        if v is None:
            return None
        try:
            return check(v)
        except _Invalid as exc:
            raise _Invalid(f"{exc.expected} or null") from None

    return optional


def _opt(default: Any, check: Check, *, secret: bool = False) -> Any:
    """A dataclass field carrying its check (and whether it is a secret) in its metadata."""
    meta = {"check": check, "secret": secret}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta, repr=not secret)


# --- the sections --------------------------------------------------------------------------


def _is_secret(key: str) -> bool:
    """Whether a key's value is a secret: a declared one, or any name with a word of
    :data:`_SECRET_WORDS` (``kafka.client_options`` entries, unknown keys)."""
    return any(word in key.lower() for word in _SECRET_WORDS)


def _section_dict(section: Any, *, redact: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if redact and f.metadata["secret"] and value is not None:
            value = MASK
        elif isinstance(value, dict):
            value = {k: MASK if redact and _is_secret(k) else v for k, v in value.items()}
        out[f.name] = value
    return out


@dataclass(frozen=True, repr=False)
class KafkaConfig:
    """Where to read and write, and how the Kafka clients (``client``) connect."""

    bootstrap_servers: str = _opt("127.0.0.1:9092", _servers)
    client: str = _opt(KAFKA_PYTHON, _choice(KAFKA_PYTHON, CONFLUENT_KAFKA))
    client_id: str = _opt("streamem", _text)
    group_id: str = _opt("streamem", _text)
    input_topic: str = _opt("streamem.points", _topic)
    output_topic: str = _opt("streamem.assignments", _topic)
    dead_letter_topic: str = _opt("streamem.dead-letter", _topic)
    anomaly_topic: str | None = _opt(None, _optional(_topic))
    model_topic: str | None = _opt("streamem.model", _optional(_topic))
    auto_offset_reset: str = _opt("earliest", _choice("earliest", "latest"))
    max_poll_records: int = _opt(2000, _integer(1))
    poll_timeout_ms: int = _opt(200, _integer(0))
    session_timeout_ms: int = _opt(10000, _integer(1))
    heartbeat_interval_ms: int = _opt(3000, _integer(1))
    max_poll_interval_ms: int = _opt(300000, _integer(1))
    request_timeout_ms: int = _opt(30000, _integer(1))
    delivery_timeout_s: float = _opt(60.0, _positive())
    security_protocol: str = _opt(
        "PLAINTEXT", _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", upper=True))
    sasl_mechanism: str | None = _opt(None, _optional(
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", upper=True)))
    sasl_plain_username: str | None = _opt(None, _optional(_text))
    sasl_plain_password: str | None = _opt(None, _optional(_text), secret=True)
    ssl_cafile: str | None = _opt(None, _optional(_text))
    ssl_certfile: str | None = _opt(None, _optional(_text))
    ssl_keyfile: str | None = _opt(None, _optional(_text))
    ssl_password: str | None = _opt(None, _optional(_text), secret=True)
    ssl_check_hostname: bool = _opt(True, _boolean)
    unassigned_rejoin_s: float = _opt(30.0, _positive())
    client_options: dict[str, Any] = _opt({}, _client_options(*CLIENTS))
    consumer_options: dict[str, Any] = _opt({}, _client_options("consumer"))
    producer_options: dict[str, Any] = _opt({}, _client_options("producer"))
    admin_options: dict[str, Any] = _opt({}, _client_options("admin"))

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every kafka-python client (consumer, producer, admin) accepts.

        ``bootstrap_servers`` as a list, the security settings that are set, and the
        ``client_options`` every client accepts, last (so they win).
        """
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
            "ssl_check_hostname": self.ssl_check_hostname,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                     "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        common = _client_keys("consumer") & _client_keys("producer") & _client_keys("admin")
        kw.update((k, v) for k, v in self.client_options.items() if k in common)
        return kw

    def kwargs_for(self, client: str) -> dict[str, Any]:
        """Keyword arguments for kafka-python's ``consumer``, ``producer`` or ``admin`` client.

        :meth:`client_kwargs`, then the ``client_options`` this client accepts, then its own
        ``<client>_options`` (which win).
        """
        accepted = _client_keys(client)
        kw = self.client_kwargs()
        kw.update((k, v) for k, v in self.client_options.items() if k in accepted)
        kw.update(getattr(self, f"{client}_options"))
        return kw

    def __repr__(self) -> str:
        items = _section_dict(self, redact=True).items()
        return f"KafkaConfig({', '.join(f'{k}={v!r}' for k, v in items)})"


@dataclass(frozen=True)
class InputConfig:
    """How input messages are encoded (see :mod:`streamem.formats`)."""

    format: str = _opt("json", _choice(*INPUT_FORMATS))
    n_features: int | None = _opt(None, _optional(_integer(1)))
    max_bytes: int = _opt(4 << 20, _integer(1))
    max_points: int = _opt(10_000, _integer(1))
    max_features: int = _opt(256, _integer(1))
    max_abs_value: float = _opt(1e15, _number(0.0, 1e100, lo_open=True))


@dataclass(frozen=True)
class OutputConfig:
    """How output messages are encoded (see :mod:`streamem.formats`) and what they carry."""

    format: str = _opt("json", _choice(*OUTPUT_FORMATS))
    top_k: int = _opt(0, _integer(0))


@dataclass(frozen=True)
class ModelConfig:
    """``OnlineGMM`` keyword arguments; ``None`` leaves the model's own default.

    The ranges are the model's own (:data:`streamem.model.validation.PARAMETER_CONSTRAINTS`),
    so a bad value fails here, naming its key.
    """

    n_components: int = _opt(8, _model("n_components"))
    covariance_type: str = _opt("full", _model("covariance_type"))
    reg_covar: float | None = _opt(None, _optional(_model("reg_covar")))
    learning_decay: float | None = _opt(None, _optional(_model("learning_decay")))
    learning_offset: float | None = _opt(None, _optional(_model("learning_offset")))
    halflife: float | None = _opt(None, _optional(_model("halflife")))
    warmup: int | None = _opt(None, _optional(_model("warmup")))
    init: str = _opt("kmeans++", _model("init"))
    assignment: str = _opt("soft", _model("assignment"))
    anomaly_rate: float | None = _opt(None, _optional(_model("anomaly_rate")))
    update_on_anomaly: bool | None = _opt(None, _optional(_boolean))
    random_state: int | None = _opt(None, _optional(_model("random_state")))


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often model state and offsets are saved together."""

    path: str | None = _opt("streamem-checkpoint.npz", _optional(_text))
    interval_s: float = _opt(30.0, _positive())
    kafka_topic: str | None = _opt(None, _optional(_topic))


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint; port 0 binds an ephemeral port."""

    enabled: bool = _opt(True, _boolean)
    host: str = _opt("127.0.0.1", _text)
    port: int = _opt(9400, _integer(0, 65535))
    max_connections: int = _opt(16, _integer(1, 1024))
    client_timeout_s: float = _opt(5.0, _positive())


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and line format."""

    level: str = _opt("INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", upper=True))
    format: str = _opt("json", _choice("json", "kv"))


@dataclass(frozen=True)
class RuntimeConfig:
    """Back-off and publishing cadence of the main loop."""

    retry_initial_s: float = _opt(0.5, _positive())
    retry_max_s: float = _opt(30.0, _positive())
    model_publish_interval_s: float = _opt(30.0, _positive())


@dataclass(frozen=True)
class SharingConfig:
    """One model shared by the instances of a group (see :mod:`streamem.sharing`)."""

    enabled: bool = _opt(True, _boolean)
    stats_topic: str | None = _opt(None, _optional(_topic))
    state_topic: str | None = _opt(None, _optional(_topic))
    delta_interval_s: float = _opt(0.1, _positive())
    publish_interval_s: float = _opt(1.0, _positive())
    max_staleness_versions: int = _opt(32, _integer(0))

    def topics(self, group_id: str) -> tuple[str, str]:
        """The stats and state topics: as set, else ``streamem.<group_id>.stats``/``.state``."""
        return (self.stats_topic or f"streamem.{group_id}.stats",
                self.state_topic or f"streamem.{group_id}.state")


@dataclass(frozen=True)
class DeliveryConfig:
    """At least once, or exactly once through Kafka transactions (README "Delivery guarantee")."""

    guarantee: str = _opt("at_least_once", _choice("at_least_once", "exactly_once"))
    transactional_id: str | None = _opt(None, _optional(_text))
    transaction_min_s: float = _opt(0.1, _number(0.0))
    transaction_timeout_s: float = _opt(10.0, _positive())


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen section per top-level YAML key."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    sharing: SharingConfig = field(default_factory=SharingConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)

    def model_kwargs(self) -> dict[str, Any]:
        """The model section without its nulls, for ``OnlineGMM(**kw)``."""
        return {k: v for k, v in _section_dict(self.model, redact=False).items() if v is not None}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of every value, secrets included (for round-trips, not logs)."""
        return {f.name: _section_dict(getattr(self, f.name), redact=False) for f in fields(self)}

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Nested dict safe to log: secrets that are set become ``"***"``."""
        return {f.name: _section_dict(getattr(self, f.name), redact=True) for f in fields(self)}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


# --- loading: collect raw values per layer, then check each once ---------------------------


@dataclass
class _Raw:
    """One raw value and where it came from; ``text`` is the unparsed override string."""

    value: Any
    source: str
    text: str | None = None


_Layer = dict[str, dict[str, _Raw]]


def _suggest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _field_names(section: str) -> list[str]:
    return [f.name for f in fields(SECTIONS[section])]


def _check_section(section: str, source: str) -> None:
    if section not in SECTIONS:
        raise ConfigError(f"unknown section '{section}'{_suggest(section, list(SECTIONS))}"
                          f" ({source})")


def _check_key(section: str, key: str, source: str) -> None:
    _check_section(section, source)
    names = _field_names(section)
    if key not in names:
        dotted = [f"{section}.{n}" for n in names]
        raise ConfigError(f"unknown key '{section}.{key}'"
                          f"{_suggest(f'{section}.{key}', dotted)} ({source})")


def _read_file(path: str) -> _Layer:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 (byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # Not str(exc): it quotes the offending line, which may hold a secret.
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    finally:
        loader.dispose()
    return _file_layer(path, node, data)


def _file_layer(path: str, node: Any, data: Any) -> _Layer:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (kafka:, model:, ...)")
    layer: _Layer = {}
    for knode, vnode in node.value:
        section = str(knode.value)
        at = f"{path}, line {knode.start_mark.line + 1}"
        _check_section(section, at)
        if section in layer:
            raise ConfigError(f"duplicate section '{section}' ({at})")
        values = data[section]
        if values is None:
            layer[section] = {}
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: expected a mapping of keys ({at})")
        layer[section] = {}
        for kn, _ in vnode.value:
            key, at = str(kn.value), f"{path}, line {kn.start_mark.line + 1}"
            _check_key(section, key, at)
            if key in layer[section]:
                raise ConfigError(f"duplicate key '{section}.{key}' ({at})")
            layer[section][key] = _Raw(values[kn.value], at)
    return layer


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _put(layer: _Layer, path: list[str], text: str, source: str) -> None:
    """Add one override ``section.key[.option]`` to ``layer``; ``text`` is its raw value.

    Secrets are kept verbatim; other values are stripped and read as YAML scalars.
    """
    if len(path) < 2 or not all(path):
        raise ConfigError(f"expected section.key=value ({source})")
    section, key = path[0], path[1]
    _check_key(section, key, source)
    secret = _is_secret(path[-1]) or _is_declared_secret(section, key)
    value = text if secret else _parse_scalar(text.strip())
    if len(path) == 2:
        layer.setdefault(section, {})[key] = _Raw(value, source, text)
        return
    if key not in OPTION_KEYS:
        raise ConfigError(f"unknown key '{'.'.join(path)}' ({source})")
    raw = layer.setdefault(section, {}).setdefault(key, _Raw({}, source))
    if not isinstance(raw.value, dict):
        raw.value = {}
    raw.value = {**raw.value, ".".join(path[2:]): value}  # librdkafka names have dots


def _env_layer(environ: Environ) -> _Layer:
    layer: _Layer = {}
    for name in sorted(environ):
        rest = name[len(ENV_PREFIX):]
        if name.startswith(ENV_PREFIX) and "__" in rest:
            _put(layer, rest.lower().split("__"), environ[name], f"from {name}")
    return layer


def _cli_layer(overrides: Sequence[str]) -> _Layer:
    layer: _Layer = {}
    for item in overrides:
        dotted, sep, text = item.partition("=")
        if not sep:  # the argument is not echoed: it may be a value typed without its key
            raise ConfigError("expected section.key=value (an --set argument has no '=')")
        dotted = dotted.strip()
        _put(layer, dotted.split("."), text, f"from --set {dotted}")
    return layer


def _is_declared_secret(section: str, key: str) -> bool:
    return any(f.name == key and f.metadata["secret"] for f in fields(SECTIONS[section]))


def _merge(layers: Sequence[_Layer]) -> _Layer:
    merged: _Layer = {}
    for layer in layers:
        for section, values in layer.items():
            target = merged.setdefault(section, {})
            for key, raw in values.items():
                old = target.get(key)
                if raw.text is None and old is not None and isinstance(old.value, dict) \
                        and isinstance(raw.value, dict) and key in OPTION_KEYS:
                    raw = _Raw({**old.value, **raw.value}, raw.source)
                target[key] = raw
    return merged


def _check_value(section: str, key: str, meta: Mapping[str, Any], raw: _Raw) -> Any:
    check = meta["check"]
    try:
        return check(raw.value)
    except _Invalid as exc:
        if raw.text is not None and raw.text != raw.value:
            try:
                return check(raw.text)
            except _Invalid:
                pass
        shown = MASK if meta["secret"] else repr(_redact(raw.value))
        raise ConfigError(f"{section}.{key}: expected {exc.expected}, got {shown}"
                          f" ({raw.source})") from None


def _redact(value: Any) -> Any:
    """``value`` with the values of secret-looking mapping keys masked, for messages."""
    if isinstance(value, dict):
        return {k: MASK if _is_secret(str(k)) else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _build(merged: _Layer) -> Config:
    sections = {}
    client_raw = merged.get("kafka", {}).get("client")
    client = KAFKA_PYTHON if client_raw is None else _check_value(
        "kafka", "client", {f.name: f for f in fields(KafkaConfig)}["client"].metadata,
        client_raw)
    for name, cls in SECTIONS.items():
        values = {}
        for f in fields(cls):
            raw = merged.get(name, {}).get(f.name)
            if raw is not None:
                meta: Mapping[str, Any] = f.metadata
                if name == "kafka" and f.name in OPTION_KEYS and client != KAFKA_PYTHON:
                    meta = {**meta, "check": _rdkafka_options(f.name)}
                values[f.name] = _check_value(name, f.name, meta, raw)
        sections[name] = cls(**values)
    return Config(**sections)


def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r}")


def _check_together(cfg: Config) -> None:
    """Rules that relate two keys (the kafka-python clients enforce the first two too)."""
    k = cfg.kafka
    if k.heartbeat_interval_ms >= k.session_timeout_ms:
        raise _fail("kafka.heartbeat_interval_ms",
                    f"an integer < kafka.session_timeout_ms ({k.session_timeout_ms})",
                    k.heartbeat_interval_ms)
    fetch_wait = k.kwargs_for("consumer").get("fetch_max_wait_ms", 500) \
        if k.client == KAFKA_PYTHON else \
        {**k.client_options, **k.consumer_options}.get("fetch.wait.max.ms", 500)
    if isinstance(fetch_wait, int) and k.request_timeout_ms <= fetch_wait:
        raise _fail("kafka.request_timeout_ms",
                    f"an integer > the consumer's fetch_max_wait_ms ({fetch_wait})",
                    k.request_timeout_ms)
    if k.security_protocol.startswith("SASL_") and k.sasl_mechanism is None:
        raise _fail("kafka.sasl_mechanism",
                    f"a SASL mechanism with security_protocol {k.security_protocol}", None)
    if cfg.runtime.retry_max_s < cfg.runtime.retry_initial_s:
        raise _fail("runtime.retry_max_s",
                    f"a number >= runtime.retry_initial_s ({cfg.runtime.retry_initial_s:g})",
                    cfg.runtime.retry_max_s)
    n_features = cfg.input.n_features
    if n_features is not None and n_features > cfg.input.max_features:
        raise _fail("input.n_features",
                    f"an integer <= input.max_features ({cfg.input.max_features})", n_features)
    if cfg.output.top_k > cfg.model.n_components:
        raise _fail("output.top_k",
                    f"an integer <= model.n_components ({cfg.model.n_components})",
                    cfg.output.top_k)


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (),
                environ: Environ | None = None) -> Config:
    """Load, merge and check the configuration.

    Parameters
    ----------
    path : the YAML file, or None for defaults only.
    overrides : ``"section.key=value"`` strings from ``--set`` (``kafka.client_options.name=v``
        sets one kafka-python option; likewise ``consumer_options``, ``producer_options``,
        ``admin_options``).
    environ : where to read ``STREAMEM_<SECTION>__<KEY>`` variables; ``os.environ`` if None.

    Raises
    ------
    ConfigError : unknown key, bad value, unreadable file or invalid YAML.
    """
    layers = [_read_file(os.fspath(path))] if path is not None else []
    layers.append(_env_layer(os.environ if environ is None else environ))
    layers.append(_cli_layer(overrides))
    cfg = _build(_merge(layers))
    _check_together(cfg)
    return cfg
