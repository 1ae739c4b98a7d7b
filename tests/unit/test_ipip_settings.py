"""ipip_tunnel's per-link settings (net.ipv4.conf.<link>.forwarding / rp_filter): what is asked,
what differs, and the reading and writing, on a stand-in for /proc/sys/net/ipv4/conf."""

from __future__ import annotations

import pytest

from ansible_collections.anycast.edge.plugins.module_utils import _ipip


@pytest.fixture
def conf_root(tmp_path):
    for device, forwarding, rp_filter in (("default", "1", "0"), ("ae-3f2a9c1d07", "1", "0")):
        (tmp_path / device).mkdir()
        (tmp_path / device / "forwarding").write_text(forwarding + "\n")
        (tmp_path / device / "rp_filter").write_text(rp_filter + "\n")
    return tmp_path


@pytest.mark.parametrize("arguments, wanted", [
    (dict(), {}),
    (dict(forwarding=False), {"forwarding": "0"}),
    (dict(forwarding=True, rp_filter=2), {"forwarding": "1", "rp_filter": "2"}),
    (dict(rp_filter=1), {"rp_filter": "1"}),
])
def test_wanted_settings_only_those_asked_for(arguments, wanted):
    assert _ipip.wanted_settings(**arguments) == wanted


def test_rp_filter_out_of_range_is_refused_by_name():
    with pytest.raises(_ipip.IpipError, match=r"rp_filter: 3 is not 0 \(off\), 1 \(strict\) or 2 \(loose\)"):
        _ipip.wanted_settings(rp_filter=3)


def test_a_pops_tunnel_is_changed_once_then_never(conf_root):
    wanted = _ipip.wanted_settings(forwarding=False, rp_filter=1)
    present = _ipip.read_settings("ae-3f2a9c1d07", wanted, conf_root=str(conf_root))
    changes = _ipip.settings_changes(wanted, present)
    assert changes == [("forwarding", "1", "0"), ("rp_filter", "0", "1")]
    _ipip.write_settings("ae-3f2a9c1d07", changes, conf_root=str(conf_root))
    assert (conf_root / "ae-3f2a9c1d07" / "forwarding").read_text().strip() == "0"
    assert _ipip.settings_changes(wanted, _ipip.read_settings("ae-3f2a9c1d07", wanted, conf_root=str(conf_root))) == []
    # What was not asked for is neither read nor compared.
    assert _ipip.settings_changes({"rp_filter": "1"}, {"forwarding": "1", "rp_filter": "1"}) == []


def test_write_failure_names_the_setting_and_says_the_host_changed(tmp_path):
    with pytest.raises(_ipip.IpipError, match=r"net\.ipv4\.conf\.ae-gone\.forwarding = 0") as caught:
        _ipip.write_settings("ae-gone", [("forwarding", "1", "0")], conf_root=str(tmp_path))
    assert caught.value.host_changed is True
