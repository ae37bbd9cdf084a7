"""The driver options are parsed once, by the codec, with the messages they always had."""

from __future__ import annotations

import pytest

from plugin import codec
from plugin.codec import BadRequest

MTU = "com.docker.network.driver.mtu"


def test_options_parse_into_one_typed_value() -> None:
    raw = {"swarmnet.vni": "300", MTU: "1400", "encrypted": "", "other": "kept"}
    opts = codec.network_options(raw)
    assert (opts.vni, opts.mtu, opts.encrypted) == (300, 1400, True)
    assert dict(opts.raw) == raw
    empty = codec.network_options({"swarmnet.vni": "", MTU: ""})
    assert (empty.vni, empty.mtu, empty.encrypted) == (None, None, False)


@pytest.mark.parametrize("value", ["false", "0", "no", " OFF "])
def test_encrypted_is_on_unless_said_off(value: str) -> None:
    assert codec.network_options({"encrypted": value}).encrypted is False


@pytest.mark.parametrize(
    ("value", "tuning"), [(None, True), ("on", True), ("", True), ("off", False), (" No ", False)]
)
def test_tuning_is_on_unless_said_off(value: str | None, tuning: bool) -> None:
    options = {} if value is None else {"swarmnet.tuning": value}
    assert codec.network_options(options).tuning is tuning


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({MTU: "jumbo"}, f"{MTU}: 'jumbo' is not an integer"),
        ({MTU: "100"}, f"{MTU}: 100 is outside 576-65535"),
        ({"swarmnet.vni": "x1"}, "swarmnet.vni: 'x1' is not a VNI (an integer 1-16777215)"),
        ({"swarmnet.vni": "0"}, "swarmnet.vni: VNI 0 is outside 1-16777215"),
        ({"swarmnet.tuning": "fast"}, "swarmnet.tuning: 'fast' is neither on nor off"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest) as e:
        codec.network_options(options)
    assert str(e.value) == message
