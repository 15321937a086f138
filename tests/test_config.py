"""The config: layering, validation messages, the example file, secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streamem.config import Config, KafkaConfig, load_config
from streamem.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "streamem.yaml"


def load(overrides=(), environ=None, path=None):
    return load_config(path, overrides, environ={} if environ is None else environ)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamem.yaml"
    path.write_text(text)
    return path


# --- defaults and layering ------------------------------------------------------------------


def test_defaults_match_the_contract():
    cfg = load()
    assert cfg == Config()
    assert cfg.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert cfg.kafka.model_topic == "streamem.model"
    assert cfg.kafka.anomaly_topic is None
    assert cfg.input.format == "json" and cfg.input.n_features is None
    assert cfg.model.n_components == 8 and cfg.model.covariance_type == "full"
    assert cfg.checkpoint.interval_s == 30.0
    assert cfg.metrics.port == 9400
    assert cfg.runtime.retry_max_s == 30.0


def test_example_file_loads_and_equals_the_defaults():
    assert load(path=EXAMPLE) == Config()


def test_example_file_lists_every_key():
    data = yaml.safe_load(EXAMPLE.read_text())
    expected = {name: {f.name for f in dataclasses.fields(section)}
                for name, section in ((f.name, f.default_factory)
                                      for f in dataclasses.fields(Config))}
    assert {name: set(values) for name, values in data.items()} == expected


def test_file_overrides_defaults(tmp_path):
    path = write(tmp_path, "kafka:\n  client_id: from-file\nmodel:\n  n_components: 3\n")
    cfg = load(path=path)
    assert cfg.kafka.client_id == "from-file"
    assert cfg.model.n_components == 3
    assert cfg.kafka.group_id == "streamem"


def test_precedence_defaults_file_env_cli(tmp_path):
    path = write(tmp_path, "model:\n  n_components: 3\n  covariance_type: diag\n"
                           "  random_state: 1\n")
    env = {"STREAMEM_MODEL__COVARIANCE_TYPE": "spherical", "STREAMEM_MODEL__RANDOM_STATE": "2"}
    cfg = load(["model.random_state=3"], env, path=path)
    assert cfg.model.n_components == 3  # file
    assert cfg.model.covariance_type == "spherical"  # env over file
    assert cfg.model.random_state == 3  # CLI over env
    assert cfg.model.init == "kmeans++"  # default


def test_env_values_are_yaml_scalars():
    cfg = load(environ={
        "STREAMEM_KAFKA__ANOMALY_TOPIC": "anomalies",
        "STREAMEM_KAFKA__MODEL_TOPIC": "null",
        "STREAMEM_METRICS__ENABLED": "false",
        "STREAMEM_CHECKPOINT__INTERVAL_S": "5",
        "STREAMEM_MODEL__REG_COVAR": "1e-6",
    })
    assert cfg.kafka.anomaly_topic == "anomalies"
    assert cfg.kafka.model_topic is None
    assert cfg.metrics.enabled is False
    assert cfg.checkpoint.interval_s == 5.0 and isinstance(cfg.checkpoint.interval_s, float)
    assert cfg.model.reg_covar == 1e-6


def test_unrelated_environment_variables_are_ignored():
    cfg = load(environ={"STREAMEM_KAFKA_VERSION": "4.1", "HOME": "/root", "PATH": "/bin"})
    assert cfg == Config()


def test_text_fields_keep_override_text_that_yaml_reads_as_a_number():
    cfg = load(["kafka.client_id=123", "kafka.sasl_plain_password=0042"])
    assert cfg.kafka.client_id == "123"
    assert cfg.kafka.sasl_plain_password == "0042"


def test_bootstrap_servers_accepts_a_list_and_a_comma_string(tmp_path):
    path = write(tmp_path, "kafka:\n  bootstrap_servers: [a:1, 'b:2']\n")
    assert load(path=path).kafka.bootstrap_servers == "a:1,b:2"
    cfg = load(["kafka.bootstrap_servers= a:1 , [::1]:9093"])
    assert cfg.kafka.client_kwargs()["bootstrap_servers"] == ["a:1", "[::1]:9093"]


def test_client_options_merge_per_option_across_layers(tmp_path):
    path = write(tmp_path, "kafka:\n  client_options: {linger_ms: 5, acks: 1}\n")
    cfg = load(["kafka.client_options.acks=all"],
               {"STREAMEM_KAFKA__CLIENT_OPTIONS__RETRIES": "3"}, path=path)
    assert cfg.kafka.client_options == {"linger_ms": 5, "acks": "all", "retries": 3}
    replaced = load(["kafka.client_options={fetch_max_wait_ms: 100}"], path=path)
    assert replaced.kafka.client_options == {"fetch_max_wait_ms": 100}


def test_empty_and_comment_only_sections_are_defaults(tmp_path):
    assert load(path=write(tmp_path, "# nothing\n")) == Config()
    assert load(path=write(tmp_path, "model:\n  # all defaults\nkafka: {}\n")) == Config()


def test_model_kwargs_drop_nulls():
    cfg = load(["model.n_components=4", "model.halflife=500", "model.update_on_anomaly=false"])
    assert cfg.model_kwargs() == {"n_components": 4, "covariance_type": "full",
                                  "init": "kmeans++", "assignment": "soft",
                                  "halflife": 500.0, "update_on_anomaly": False}


def test_model_kwargs_are_accepted_by_the_model():
    from streamem.model import OnlineGMM

    cfg = load(["model.n_components=2", "model.random_state=0", "model.reg_covar=1e-5"])
    gmm = OnlineGMM(**cfg.model_kwargs())
    assert gmm.n_components == 2 and gmm.reg_covar == 1e-5


def test_client_kwargs_are_accepted_by_kafka_python_clients():
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    cfg = load(["kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-256",
                "kafka.sasl_plain_username=u", "kafka.sasl_plain_password=p",
                "kafka.ssl_cafile=/ca.pem", "kafka.client_options.retry_backoff_ms=50"])
    kw = cfg.kafka.client_kwargs()
    assert kw == {"bootstrap_servers": ["127.0.0.1:9092"], "client_id": "streamem",
                  "security_protocol": "SASL_SSL", "request_timeout_ms": 30000,
                  "ssl_check_hostname": True, "sasl_mechanism": "SCRAM-SHA-256",
                  "sasl_plain_username": "u", "sasl_plain_password": "p",
                  "ssl_cafile": "/ca.pem", "retry_backoff_ms": 50}
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(kw) <= set(client.DEFAULT_CONFIG), client.__name__


def test_plaintext_client_kwargs_leave_unset_security_out():
    kw = load().kafka.client_kwargs()
    assert not any(k.startswith("sasl_") for k in kw)
    assert set(kw) == {"bootstrap_servers", "client_id", "security_protocol",
                       "request_timeout_ms", "ssl_check_hostname"}


def test_config_is_frozen():
    cfg = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.n_components = 2  # type: ignore[misc]


# --- secrets ---------------------------------------------------------------------------------


def test_secrets_never_appear_in_repr_str_or_redacted():
    cfg = load(["kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=PLAIN",
                "kafka.sasl_plain_username=alice", "kafka.sasl_plain_password=hunter2",
                "kafka.ssl_password=s3cr3t-key",
                "kafka.client_options.sasl_oauth_token_provider=tok-en-value",
                "kafka.admin_options.sasl_plain_password=very-secret"])
    for text in (repr(cfg), str(cfg), repr(cfg.kafka), str(cfg.redacted())):
        for secret in ("hunter2", "s3cr3t-key", "tok-en-value", "very-secret"):
            assert secret not in text
        assert "alice" in text
    red = cfg.redacted()["kafka"]
    assert red["sasl_plain_password"] == "***" and red["ssl_password"] == "***"
    assert red["client_options"] == {"sasl_oauth_token_provider": "***"}
    assert red["admin_options"] == {"sasl_plain_password": "***"}
    assert cfg.kafka.sasl_plain_password == "hunter2"  # the real value stays usable


def test_unset_secrets_are_redacted_as_null():
    assert load().redacted()["kafka"]["sasl_plain_password"] is None


def test_an_invalid_secret_is_not_echoed_in_the_error(tmp_path):
    path = write(tmp_path, "kafka:\n  ssl_password: [hunter2]\n")
    with pytest.raises(ConfigError, match=r"kafka\.ssl_password") as err:
        load(path=path)
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("secret", ["#pw", "null", "yes", "0042", " spaced ", "a: b", "[x", "~"])
def test_secrets_from_env_and_cli_are_taken_literally(secret):
    by_env = load(environ={"STREAMEM_KAFKA__SASL_PLAIN_PASSWORD": secret,
                           "STREAMEM_KAFKA__CLIENT_OPTIONS__SSL_PASSWORD": secret})
    by_cli = load([f"kafka.ssl_password={secret}",
                   f"kafka.producer_options.sasl_plain_password={secret}"])
    assert by_env.kafka.sasl_plain_password == secret
    assert by_env.kafka.client_options["ssl_password"] == secret
    assert by_cli.kafka.ssl_password == secret
    assert by_cli.kafka.producer_options["sasl_plain_password"] == secret


def test_other_overrides_are_still_yaml_scalars():
    cfg = load(["kafka.client_options.retries= 5 ", "kafka.anomaly_topic=null"])
    assert cfg.kafka.client_options["retries"] == 5 and cfg.kafka.anomaly_topic is None


@pytest.mark.parametrize(("overrides", "environ"), [
    (["kafka.sasl_plain_pasword=hunter2"], None),  # a mistyped secret key
    (["kafka.sasl_password=hunter2"], None),
    (["kafak.sasl_plain_password=hunter2"], None),  # a mistyped section
    (["model.zzzzzz=hunter2"], None),  # any unknown key: its value is never shown
    (["kafka.client_id.password=hunter2"], None),
    (["hunter2"], None),  # a value given without its key
    (["kafka.sasl_plain_password"], None),
    ([], {"STREAMEM_KAFKA__SASL_PLAIN_PASWORD": "hunter2"}),
    ([], {"STREAMEM_KAFKAA__SSL_PASSWORD": "hunter2"}),
    (["kafka.sasl_plain_password="], None),
])
def test_errors_never_show_a_secret_or_an_unknown_keys_value(overrides, environ):
    with pytest.raises(ConfigError) as err:
        load(overrides, environ)
    assert "hunter2" not in str(err.value)


def test_an_invalid_client_options_mapping_does_not_show_its_secrets(tmp_path):
    path = write(tmp_path, "kafka:\n  client_options: {1: x, sasl_oauth_token: hunter2}\n")
    with pytest.raises(ConfigError, match=r"kafka\.client_options: expected a mapping") as err:
        load(path=path)
    assert "hunter2" not in str(err.value) and "'***'" in str(err.value)


# --- validation: every error names its key ---------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ("model.n_components=eight", "model.n_components: expected an integer >= 1, got 'eight'"),
    ("model.n_components=0", "model.n_components: expected an integer >= 1, got 0"),
    ("model.n_components=2.5", "model.n_components: expected an integer >= 1, got 2.5"),
    ("model.n_components=true", "model.n_components: expected an integer >= 1, got True"),
    ("model.covariance_type=tied", "model.covariance_type: expected one of 'full', 'diag'"),
    ("model.learning_decay=0.5", "model.learning_decay: expected a number > 0.5 and <= 1"),
    ("model.reg_covar=0", "model.reg_covar: expected a number > 0 or null, got 0"),
    ("model.anomaly_rate=1", "model.anomaly_rate: expected a number > 0 and < 1"),
    ("model.random_state=-1", "model.random_state: expected an integer >= 0 or null"),
    ("model.update_on_anomaly=maybe", "model.update_on_anomaly: expected true or false or null"),
    ("metrics.port=65536", "metrics.port: expected an integer >= 0 and <= 65535, got 65536"),
    ("metrics.port=-1", "metrics.port: expected an integer >= 0"),
    ("metrics.enabled=1", "metrics.enabled: expected true or false, got 1"),
    ("checkpoint.interval_s=0", "checkpoint.interval_s: expected a number > 0, got 0"),
    ("checkpoint.interval_s=.inf", "checkpoint.interval_s: expected a number > 0, got inf"),
    ("runtime.retry_initial_s=-1", "runtime.retry_initial_s: expected a number > 0"),
    ("kafka.poll_timeout_ms=-5", "kafka.poll_timeout_ms: expected an integer >= 0, got -5"),
    ("kafka.auto_offset_reset=smallest", "kafka.auto_offset_reset: expected one of 'earliest'"),
    ("kafka.security_protocol=TLS", "kafka.security_protocol: expected one of 'PLAINTEXT'"),
    ("kafka.sasl_mechanism=GSSAPI", "kafka.sasl_mechanism: expected one of 'PLAIN'"),
    ("kafka.bootstrap_servers=localhost", "kafka.bootstrap_servers: expected 'host:port"),
    ("kafka.bootstrap_servers=h:0", "kafka.bootstrap_servers: expected 'host:port"),
    ("kafka.bootstrap_servers=h:1,:2", "kafka.bootstrap_servers: expected 'host:port"),
    ("kafka.bootstrap_servers=h:port", "kafka.bootstrap_servers: expected 'host:port"),
    ("kafka.input_topic=has space", "kafka.input_topic: expected a Kafka topic name"),
    ("kafka.output_topic=", "kafka.output_topic: expected a Kafka topic name"),
    ("kafka.client_options=[1]", "kafka.client_options: expected a mapping"),
    ("input.format=csv", "input.format: expected one of 'json', 'f32', 'f64', 'block'"),
    ("input.n_features=0", "input.n_features: expected an integer >= 1 or null, got 0"),
    ("input.max_abs_value=1e200", "input.max_abs_value: expected a number > 0 and <= 1e+100"),
    ("output.top_k=-1", "output.top_k: expected an integer >= 0, got -1"),
    ("output.format=avro", "output.format: expected one of 'json', 'block', got 'avro'"),
    ("logging.format=xml", "logging.format: expected one of 'json', 'kv', got 'xml'"),
    ("logging.level=loud", "logging.level: expected one of 'DEBUG'"),
])
def test_bad_values_name_the_key_and_what_was_expected(override, message):
    with pytest.raises(ConfigError) as err:
        load([override])
    assert str(err.value).startswith(message)
    assert f"from --set {override.partition('=')[0]})" in str(err.value)


@pytest.mark.parametrize(("overrides", "message"), [
    (["kafka.heartbeat_interval_ms=10000"],
     "kafka.heartbeat_interval_ms: expected an integer < kafka.session_timeout_ms (10000)"),
    (["kafka.request_timeout_ms=400"],
     "kafka.request_timeout_ms: expected an integer > the consumer's fetch_max_wait_ms (500)"),
    (["kafka.security_protocol=SASL_PLAINTEXT"], "kafka.sasl_mechanism: expected a SASL"),
    (["runtime.retry_initial_s=10", "runtime.retry_max_s=5"],
     "runtime.retry_max_s: expected a number >= runtime.retry_initial_s (10), got 5.0"),
    (["output.top_k=3", "model.n_components=2"],
     "output.top_k: expected an integer <= model.n_components (2), got 3"),
    (["input.n_features=2000"],
     "input.n_features: expected an integer <= input.max_features (256), got 2000"),
])
def test_rules_between_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        load(overrides)
    assert str(err.value).startswith(message)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        load(["kafka.bootstrap_server=h:1"])
    assert str(err.value).startswith(
        "unknown key 'kafka.bootstrap_server' (did you mean 'kafka.bootstrap_servers'?)")


def test_unknown_section_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section 'kafak' \(did you mean 'kafka'\?\)"):
        load(path=write(tmp_path, "kafak:\n  client_id: x\n"))


def test_unknown_key_without_a_close_match_has_no_suggestion():
    with pytest.raises(ConfigError) as err:
        load(["model.zzzzzz=1"])
    assert "did you mean" not in str(err.value)
    assert "unknown key 'model.zzzzzz'" in str(err.value)


def test_unknown_env_key_names_the_variable():
    with pytest.raises(ConfigError, match=r"unknown key 'metrics\.prot'.*STREAMEM_METRICS__PROT"):
        load(environ={"STREAMEM_METRICS__PROT": "1"})


def test_bad_env_value_names_key_and_variable():
    pattern = r"^metrics\.port: expected .* got 'http' \(from STREAMEM_METRICS__PORT"
    with pytest.raises(ConfigError, match=pattern):
        load(environ={"STREAMEM_METRICS__PORT": "http"})


def test_sub_keys_are_only_for_client_options():
    with pytest.raises(ConfigError, match=r"unknown key 'kafka\.client_id\.x'"):
        load(["kafka.client_id.x=1"])


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load(["model.n_components"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load(["n_components=3"])


def test_bad_file_value_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "kafka:\n  client_id: x\nmodel:\n  n_components: eight\n")
    with pytest.raises(ConfigError) as err:
        load(path=path)
    assert str(err.value) == (f"model.n_components: expected an integer >= 1, got 'eight' "
                              f"({path}, line 4)")


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "kafka:\n  client_id: x\n  group_id: [unclosed\nmodel: {}\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 4, column \d+: invalid YAML"):
        load(path=path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load(path=tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(path=tmp_path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("kafka:\n  client_id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load(path=path)


def test_unsafe_yaml_tags_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load(path=write(tmp_path, "kafka:\n  client_id: !!python/object:os.system x\n"))


def test_duplicate_keys_are_rejected(tmp_path):
    path = write(tmp_path, "model:\n  n_components: 2\n  n_components: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'model\.n_components' .*line 3"):
        load(path=path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load(path=write(tmp_path, text))


def test_section_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"^model: expected a mapping of keys .*line 1"):
        load(path=write(tmp_path, "model: 3\n"))


def test_enums_are_case_insensitive_where_kafka_and_logging_are():
    cfg = load(["logging.level=debug", "kafka.security_protocol=ssl"])
    assert cfg.logging.level == "DEBUG" and cfg.kafka.security_protocol == "SSL"


def test_metrics_port_zero_means_ephemeral():
    assert load(["metrics.port=0"]).metrics.port == 0


# --- round-trip ------------------------------------------------------------------------------

topics = st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True)
hosts = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)


@st.composite
def configs(draw) -> Config:
    servers = draw(st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1, max_size=3))
    session = draw(st.integers(2, 100_000))
    n_components = draw(st.integers(1, 64))
    retry_initial = draw(st.floats(1e-3, 10, allow_nan=False))
    kafka = KafkaConfig(
        bootstrap_servers=",".join(f"{h}:{p}" for h, p in servers),
        client_id=draw(topics), group_id=draw(topics), input_topic=draw(topics),
        anomaly_topic=draw(st.none() | topics),
        max_poll_records=draw(st.integers(1, 10**6)),
        session_timeout_ms=session,
        heartbeat_interval_ms=draw(st.integers(1, session - 1)),
        delivery_timeout_s=draw(st.floats(1e-3, 1e6)),
        sasl_plain_password=draw(st.none() | st.text(min_size=1)),
        client_options=draw(st.dictionaries(st.sampled_from(["linger_ms", "retries", "acks",
                                                             "metadata_max_age_ms"]),
                                            st.integers() | st.booleans() | st.text(),
                                            max_size=3)),
    )
    model = dataclasses.replace(
        Config().model, n_components=n_components,
        covariance_type=draw(st.sampled_from(["full", "diag", "spherical"])),
        reg_covar=draw(st.none() | st.floats(1e-12, 1.0)),
        learning_decay=draw(st.none() | st.floats(0.51, 1.0)),
        warmup=draw(st.none() | st.integers(1, 10**6)),
        random_state=draw(st.none() | st.integers(0, 2**32)),
    )
    return dataclasses.replace(
        Config(), kafka=kafka, model=model,
        output=dataclasses.replace(Config().output, top_k=draw(st.integers(0, n_components))),
        metrics=dataclasses.replace(Config().metrics, port=draw(st.integers(0, 65535))),
        runtime=dataclasses.replace(Config().runtime, retry_initial_s=retry_initial,
                                    retry_max_s=retry_initial * 2),
    )


@settings(max_examples=60, deadline=None)
@given(cfg=configs())
def test_to_dict_written_as_yaml_loads_back_equal(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("cfg") / "round.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load(path=path) == cfg


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 10**9), topic=topics, rate=st.floats(1e-9, 1 - 1e-9))
def test_cli_values_round_trip(n, topic, rate):
    cfg = load([f"input.n_features={n}", f"input.max_features={n}", f"kafka.output_topic={topic}",
                f"model.anomaly_rate={rate!r}"])
    got = (cfg.input.n_features, cfg.kafka.output_topic, cfg.model.anomaly_rate)
    assert got == (n, topic, rate)


@pytest.mark.parametrize("fmt", ["json", "block"])
def test_output_format_takes_json_or_block(fmt):
    assert load([f"output.format={fmt}"]).output.format == fmt
    assert load(environ={"STREAMEM_OUTPUT__FORMAT": fmt}).output.format == fmt
