"""Names vulture (`make lint`) cannot see used: frameworks call or read them. Not imported, only
passed to vulture; each line names an attribute so vulture counts it as used."""

# ruff: noqa: B018, F821 - bare names and attribute reads are what vulture reads here

# prometheus_client calls a registered collector's describe().
_.describe
# shlex.shlex reads its settings as attributes.
_.whitespace_split
_.commenters
# io.RawIOBase calls these on the deadline reader and writer.
_.readable
_.readinto
_.writable
# wsgiref and http.server call, or read, these on handlers and servers.
_.log_exception
_.log_message
_.request_version
_.requestline
_.request_handler
_.request_queue_size
_.server_name
_.server_port
_.close_connection
daemon_threads
block_on_close
protocol_version
do_DELETE
do_HEAD
do_POST
do_PUT
# pytest calls its hooks by name and reads pytestmark; a fixture taken only for its side effect
# is an argument no body reads.
pytest_configure
pytest_terminal_summary
pytestmark
monitoring_preflight
# tests/differential/generator.py (on main) calls its match makers by name: getattr(f"_m_{kind}").
_._m_address
_._m_set
_._m_iface
_._m_conntrack
_._m_state
_._m_iprange
_._m_comment
_._m_addrtype
_._m_physdev
_._m_mark
_._m_dport
_._m_sport
_._m_multiport
_._m_tcpflags
# tests/differential/nft_generator.py calls its match makers by name the same way.
_._m_named_set
_._m_undecidable
_._m_ct_state
_._m_ct_direction
_._m_th_dport
