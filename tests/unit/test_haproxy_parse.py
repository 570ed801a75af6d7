"""Pure tests of HAProxy reply parsing, on text captured from HAProxy 2.6.12 (no I/O)."""

from __future__ import annotations

import csv
import dataclasses
import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wso2_operator import errors
from wso2_operator.haproxy import build_lb_client
from wso2_operator.haproxy_parse import (
    fresh_pass_after_forced_down,
    merge_state,
    parse_servers_state,
    parse_show_stat,
    raise_for_error,
)
from wso2_operator.haproxy_transport import SshUnixTransport, TcpTransport, UnixSocketTransport

# Captured with `show stat PRD_wso2ei 4 -1` / `show servers state PRD_wso2ei` on a fleet LB:
# node1 UP; node2 in MAINT; node2 right after `state drain` from MAINT (note the STALE L7OK and
# "DRAIN 1/2": no check has run yet); node2 after `health down`.
HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wre"
    "tr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,t"
    "hrottle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_durat"
    "ion,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rat"
    "e_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,"
    "last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,ag"
    "ent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,c"
    "ookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,r"
    "euse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_m"
    "ax,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_st"
    "atus,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_h"
    "andshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_r"
    "cvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_r"
    "esp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h"
    "2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_t"
    "otal_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,"
)

ROW_UP = (
    "PRD_wso2ei,node1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,1,0,,1,3,1,,0,,2,0,,0,L7OK,2"
    "00,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,3,,,,127.110.2"
    "46.11:8243,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,"
    ",,"
)

ROW_MAINT = (
    "PRD_wso2ei,node2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,1,0,0,,1,3,2,,0,,2,0,,0,,,,"
    "0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,127.110.246.12:8243,,http,,,,,,,,0,0"
    ",0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,"
)

ROW_DRAIN_STALE = (
    "PRD_wso2ei,node2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DRAIN 1/2,1,1,0,0,1,0,0,,1,3,2,,0,,2,0,,0"
    ",L7OK,200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,2,,,,12"
    "7.110.246.12:8243,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,"
    ",,,,,,,,,"
)

ROW_DOWN_FORCED = (
    "PRD_wso2ei,node2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,0,2,0,0,,1,3,2,,0,,2,0,,0,L7OK"
    ",200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,0,,,,127.110"
    ".246.12:8243,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,"
    ",,,,"
)

FULL_SHOW_STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wre"
    "tr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,t"
    "hrottle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_durat"
    "ion,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rat"
    "e_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,"
    "last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,ag"
    "ent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,c"
    "ookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,r"
    "euse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_m"
    "ax,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_st"
    "atus,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_h"
    "andshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_r"
    "cvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_r"
    "esp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h"
    "2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_t"
    "otal_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,\nfe_ws"
    "o2,FRONTEND,,,0,0,9984,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,"
    "0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0"
    ",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,\nPRD_wso2ei,node1,0,0,0,0,,0,0,0,,0,,0,0,0"
    ",0,UP,1,1,0,0,0,1,0,,1,3,1,,0,,2,0,,0,L7OK,200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,"
    "0,,,,Layer7 check passed,,2,2,3,,,,127.110.246.11:8243,,http,,,,,,,,0,0,0,,,0,,0,0,0,"
    "0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\nPRD_wso2ei,node2,0,0,0,0,,0,0,0,,0,,0,"
    "0,0,0,DOWN,1,1,0,0,2,0,0,,1,3,2,,0,,2,0,,0,L7OK,200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0"
    ",0,0,0,,,,Layer7 check passed,,2,2,0,,,,127.110.246.12:8243,,http,,,,,,,,0,0,0,,,0,,0"
    ",0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\nPRD_wso2ei,BACKEND,0,0,0,0,999,0,"
    "0,0,0,0,,0,0,0,0,UP,1,1,0,,0,1,0,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1"
    ",,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,1,0,0,0,-,0,0"
    ",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,2,354,48,0,0,"
)

SERVERS_STATE_DRAIN = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight s"
    "rv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_hea"
    "lth srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port "
    "srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 P"
    "RD_wso2ei 1 node1 127.110.246.11 2 0 1 1 1 15 3 3 6 0 0 0 - 8243 - 0 0 - - 0\n3 PRD_ws"
    "o2ei 2 node2 127.110.246.12 2 8 1 1 0 15 3 2 6 0 0 0 - 8243 - 0 0 - - 0"
)

SERVERS_STATE_FORCED_DOWN = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight s"
    "rv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_hea"
    "lth srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port "
    "srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 P"
    "RD_wso2ei 1 node1 127.110.246.11 2 0 1 1 1 15 3 3 6 0 0 0 - 8243 - 0 0 - - 0\n3 PRD_ws"
    "o2ei 2 node2 127.110.246.12 0 8 1 1 0 15 3 0 6 0 0 0 - 8243 - 0 0 - - 0"
)


def stat(*rows: str) -> str:
    return "\n".join([HEADER, *rows])


def test_parses_by_header_names() -> None:
    servers = parse_show_stat(stat(ROW_UP, ROW_MAINT), backend="PRD_wso2ei")
    assert set(servers) == {"node1", "node2"}
    up = servers["node1"]
    assert (up.status, up.scur, up.qcur, up.weight) == ("UP", 0, 0, 1)
    assert (up.check_status, up.check_health, up.check_rise, up.check_fall) == ("L7OK", 3, 2, 2)
    assert up.is_up and not up.is_maint and not up.is_drain
    assert up.admin_state == "READY" and up.op_running and up.check_passed
    assert up.raw["addr"].endswith(":8243")
    maint = servers["node2"]
    assert maint.is_maint and maint.admin_state == "MAINT"
    assert maint.check_status == "" and not maint.check_passed


def test_column_order_does_not_matter() -> None:
    rows = list(csv.reader(io.StringIO(stat(ROW_UP, ROW_DRAIN_STALE)[2:])))
    order = list(range(len(rows[0])))
    random.Random(7).shuffle(order)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([r[i] for i in order])
    shuffled = "# " + buf.getvalue()
    assert parse_show_stat(shuffled) == parse_show_stat(stat(ROW_UP, ROW_DRAIN_STALE))


def test_summary_rows_and_other_proxies_are_skipped() -> None:
    servers = parse_show_stat(FULL_SHOW_STAT, backend="PRD_wso2ei")
    assert set(servers) == {"node1", "node2"}
    assert set(parse_show_stat(FULL_SHOW_STAT, backend="other")) == set()


def test_quoted_field_with_comma() -> None:
    rows = list(csv.reader(io.StringIO(stat(ROW_UP)[2:])))
    header, row = rows
    row[header.index("check_desc")] = "Layer7 wrong status, really"
    row[header.index("status")] = "DOWN 1/2"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, row])
    s = parse_show_stat("# " + buf.getvalue())["node1"]
    assert s.status == "DOWN 1/2"
    assert s.raw["check_desc"] == "Layer7 wrong status, really"
    assert s.raw["check_rise"] == "2"


def test_stale_check_right_after_drain_from_maint_is_not_fresh() -> None:
    stale = parse_show_stat(stat(ROW_DRAIN_STALE))["node2"]
    state = parse_servers_state(SERVERS_STATE_DRAIN)["node2"]
    merged = merge_state(stale, state)
    # Looks healthy (operational, L7OK), but no check has run since the change.
    assert merged.status == "DRAIN 1/2" and merged.check_passed and merged.op_running
    assert merged.admin_state == "DRAIN"
    assert not fresh_pass_after_forced_down(merged)


def test_forced_down_drain_server_shows_as_down_in_show_stat() -> None:
    down = parse_show_stat(stat(ROW_DOWN_FORCED))["node2"]
    # show stat alone cannot tell DRAIN from READY for a DOWN server...
    assert down.status == "DOWN" and down.admin_state == "READY"
    # ...the admin flags from `show servers state` can.
    merged = merge_state(down, parse_servers_state(SERVERS_STATE_FORCED_DOWN)["node2"])
    assert merged.admin_state == "DRAIN" and not merged.op_running
    assert merged.check_status == "L7OK"  # stale again: the forced DOWN does not clear it
    assert not fresh_pass_after_forced_down(merged)


@pytest.mark.parametrize(
    ("status", "check", "op", "flags", "expected"),
    [
        ("DRAIN", "L7OK", 2, 0x08, True),
        ("DRAIN", "L4OK", 2, 0x08, True),
        ("DRAIN", "* L7OK", 2, 0x08, False),  # a check is running: wait for its result
        ("DRAIN 1/2", "L7OK", 2, 0x08, False),  # a check failed since it came up
        ("DRAIN", "L7STS", 2, 0x08, False),
        ("DOWN", "L7OK", 0, 0x08, False),
        ("DOWN 1/2", "L7OK", 0, 0x08, False),
        ("UP", "L7OK", 2, 0x00, False),  # not our DRAIN stage
        ("MAINT", "", 0, 0x01, False),
    ],
)
def test_fresh_pass_rule(status: str, check: str, op: int, flags: int, expected: bool) -> None:
    rows = list(csv.reader(io.StringIO(stat(ROW_UP)[2:])))
    header, row = rows
    row[header.index("status")] = status
    row[header.index("check_status")] = check
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, row])
    s = parse_show_stat("# " + buf.getvalue())["node1"]
    state = parse_servers_state(SERVERS_STATE_DRAIN)["node1"]
    merged = merge_state(s, dataclasses.replace(state, op_state=op, admin_flags=flags))
    assert fresh_pass_after_forced_down(merged) is expected


def test_servers_state_flags() -> None:
    states = parse_servers_state(SERVERS_STATE_DRAIN)
    assert states["node1"].admin_state == "READY" and states["node1"].op_state == 2
    assert states["node2"].admin_state == "DRAIN" and states["node2"].check_health == 2
    assert states["node1"].check_configured
    no_check = SERVERS_STATE_DRAIN.replace(" 15 3 3 6 0 0 0 ", " 1 0 0 0 0 0 0 ")
    assert not parse_servers_state(no_check)["node1"].check_configured
    maint = SERVERS_STATE_DRAIN.replace("node2 127.110.246.12 2 8", "node2 127.110.246.12 0 1")
    assert parse_servers_state(maint)["node2"].admin_state == "MAINT"


@pytest.mark.parametrize(
    ("reply", "exc"),
    [
        ("No such server.", errors.NoSuchServer),
        ("No such backend.", errors.NoSuchBackend),
        ("Can't find backend.", errors.NoSuchBackend),
        ("No such proxy.", errors.NoSuchBackend),
        ("Permission denied", errors.PermissionDenied),
        (
            "Unknown command, but maybe one of the following ones is a better match:\n  x",
            errors.UnknownCommand,
        ),
        ("Require 'backend/server'.", errors.HAProxyCommandError),
        (
            "'set server <srv> state' expects 'ready', 'drain' and 'maint'.",
            errors.HAProxyCommandError,
        ),
    ],
)
def test_error_texts_become_typed_errors(reply: str, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        raise_for_error(
            reply + "\n",
            lb="lb1",
            command="set server b/s state drain",
            backend="b",
            server="s",
            expect_empty=True,
        )
    assert info.value.transient is False
    assert info.value.lb == "lb1" and "lb1" in str(info.value)


def test_empty_reply_is_success_and_other_text_is_only_an_error_for_writes() -> None:
    raise_for_error("", lb="lb1", command="set server b/s state drain", expect_empty=True)
    raise_for_error("admin", lb="lb1", command="show cli level")


@pytest.mark.parametrize("text", ["", "garbage", "1\nnot a header\n"])
def test_unparseable_replies(text: str) -> None:
    with pytest.raises(errors.LBProtocolError):
        parse_show_stat(text)
    with pytest.raises(errors.LBProtocolError):
        parse_servers_state(text)


@settings(max_examples=60, deadline=None)
@given(
    scur=st.integers(0, 10**6),
    qcur=st.integers(0, 10**6),
    status=st.sampled_from(
        [
            "UP",
            "UP 1/2",
            "DOWN",
            "DOWN 1/2",
            "NOLB",
            "DRAIN",
            "MAINT",
            "MAINT (via b/s)",
            "MAINT (resolution)",
            "no check",
        ]
    ),
)
def test_counters_and_status_roundtrip(scur: int, qcur: int, status: str) -> None:
    rows = list(csv.reader(io.StringIO(stat(ROW_UP)[2:])))
    header, row = rows
    row[header.index("scur")] = str(scur)
    row[header.index("qcur")] = str(qcur)
    row[header.index("status")] = status
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, row])
    s = parse_show_stat("# " + buf.getvalue())["node1"]
    assert (s.scur, s.qcur, s.sessions, s.status) == (scur, qcur, scur + qcur, status)
    assert s.is_maint == status.startswith("MAINT")
    assert s.is_up == status.startswith("UP")
    assert s.admin_state == ("MAINT" if s.is_maint else "DRAIN" if s.is_drain else "READY")


def test_error_transience() -> None:
    assert errors.LBUnreachable.transient and errors.SSHUnreachable.transient
    assert errors.SSHCommandTimeout.transient and errors.DrainTimeout.transient
    assert errors.ReenableTimeout.transient
    for cls in (
        errors.NoSuchServer,
        errors.NoSuchBackend,
        errors.PermissionDenied,
        errors.NotAdmin,
        errors.UnknownCommand,
        errors.HostKeyMismatch,
        errors.SSHAuthFailed,
        errors.SSHCommandFailed,
        errors.ConfigError,
        errors.NoHealthCheck,
    ):
        assert cls.transient is False, cls
    assert issubclass(errors.NotAdmin, errors.PermissionDenied)


def test_lb_specs() -> None:
    ssh = build_lb_client(
        object(),  # type: ignore[arg-type]  # only stored, not used
        {"name": "lb1", "host": "127.0.0.101", "sshPort": 2222, "socket": "/run/haproxy.sock"},
    )
    assert isinstance(ssh.transport, SshUnixTransport)
    assert (ssh.name, ssh.transport.host, ssh.transport.port) == ("lb1", "127.0.0.101", 2222)
    assert ssh.transport.path == "/run/haproxy.sock"
    default_port = build_lb_client(object(), {"name": "a", "host": "h", "socket": "/s"})  # type: ignore[arg-type]
    assert default_port.transport.port == 22  # type: ignore[attr-defined]
    tcp = build_lb_client(None, {"name": "lb2", "address": "127.0.0.102:9999"})
    assert isinstance(tcp.transport, TcpTransport)
    assert (tcp.transport.host, tcp.transport.port) == ("127.0.0.102", 9999)
    v6 = build_lb_client(None, {"name": "lb3", "address": "[::1]:9999"})
    assert v6.transport.host == "::1"  # type: ignore[attr-defined]
    local = build_lb_client(None, {"name": "lb4", "socket": "/tmp/x.sock"})
    assert isinstance(local.transport, UnixSocketTransport)
    for bad in (
        {"host": "h", "socket": "/s"},
        {"name": "x"},
        {"name": "x", "address": "nope"},
        {"name": "x", "host": "h", "socket": "/s"},
    ):
        with pytest.raises(errors.ConfigError):
            build_lb_client(None, bad)
