import http.client
import json
import struct
import threading

import numpy as np
import pytest

from fedtf.coordinator import Coordinator
from fedtf.endpoints import make_http_server
from fedtf.transport import Connection, TransportError, decode, encode, token_ok

SHAPES = [(4, 3), (3,), (3, 2), (2,)]
TOKEN = b"s3cret-token"


def _weights(rng, bad=None):
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def test_round_trip_is_exact_and_zero_copy():
    rng = np.random.default_rng(0)
    ws = _weights(rng)
    body = encode({"client": 1, "examples": 5}, {"w": ws, "dc": ws[:1]})
    msg = decode(body)
    assert msg.meta == {"client": 1, "examples": 5}
    assert msg.names[:2] == ["w/0", "w/1"] and len(msg.group("w")) == 4 and len(msg.group("dc")) == 1
    for a, b in zip(ws, msg.group("w")):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    flat = msg.flat("w")
    assert flat.base is not None and np.array_equal(flat, np.concatenate([w.ravel() for w in ws]))
    assert msg.offsets[0] % 64 == 0
    # binary: 4 bytes per float plus a small header, no JSON number lists
    assert len(body) < 4 * sum(w.size for w in ws) * 1.3 + 512
    other = decode(encode({}, {"x": [np.arange(5, dtype=np.int64), np.zeros((0, 3), np.float64)]}))
    assert other.tensors[0].tolist() == [0, 1, 2, 3, 4] and other.tensors[1].shape == (0, 3)


def _header(body):
    (hlen,) = struct.unpack("<I", body[4:8])
    return hlen, json.loads(body[8:8 + hlen])


def _with_header(body, header):
    hlen, _ = _header(body)
    h = json.dumps(header).encode()
    return body[:4] + struct.pack("<I", len(h)) + h + body[8 + hlen:]


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"XXXX" + b[4:], "magic"),
    (lambda b: b[:-4], "are left in the body"),
    (lambda b: b + b"\0\0\0\0", "trailing"),
    (lambda b: b[:4] + struct.pack("<I", 1 << 30) + b[8:], "header length"),
    (lambda b: b[:8] + b"{not json" + b[17:], "unreadable header"),
])
def test_decode_rejects_malformed(mutate, match):
    body = encode({"a": 1}, {"w": _weights(np.random.default_rng(1))})
    with pytest.raises(TransportError, match=match):
        decode(mutate(body))


@pytest.mark.parametrize("change,match", [
    (lambda h: h["tensors"][0].update(dtype="object"), "not allowed"),
    (lambda h: h["tensors"][0].update(shape=[-1, 3]), "bad shape"),
    (lambda h: h["tensors"][0].update(shape="4x3"), "bad shape"),
])
def test_decode_rejects_bad_specs(change, match):
    body = encode({"a": 1}, {"w": _weights(np.random.default_rng(1))})
    _, h = _header(body)
    change(h)
    with pytest.raises(TransportError, match=match):
        decode(_with_header(body, h))


def test_token_check():
    assert token_ok("Bearer s3cret-token", TOKEN)
    assert not token_ok("Bearer s3cret-tokeX", TOKEN)
    assert not token_ok(None, TOKEN) and not token_ok("s3cret-token", TOKEN)


# -- the server side: validation through the coordinator and over real HTTP -----------------------
@pytest.fixture
def coord():
    c = Coordinator(TOKEN, SHAPES, shard_sizes=[10, 20, 30], extras=())
    c.open_round(1, [0, 1, 2], np.zeros(sum(int(np.prod(s)) for s in SHAPES), np.float32), {}, {})
    return c


def _update(client=0, examples=5, ws=None, extra_meta=None):
    ws = ws if ws is not None else _weights(np.random.default_rng(client))
    return encode({"client": client, "examples": examples, "train_s": 0.1, "loss": 1.0, **(extra_meta or {})},
                  {"w": ws})


def test_deliver_accepts_good_update(coord):
    code, _ = coord.deliver(coord.state.seq, 0, _update(0, 10))
    assert code == 200 and 0 in coord.state.updates
    assert coord.state.client_metrics[0]["examples"] == 10
    assert coord.deliver(coord.state.seq, 0, _update(0, 10))[0] == 409  # only once


@pytest.mark.parametrize("body_fn,reason", [
    (lambda r: _update(0, 5, _weights(r)[:3]), "expected 4 tensors"),
    (lambda r: _update(0, 5, [w.T if w.ndim == 2 else w for w in _weights(r)]), "shape"),
    (lambda r: _update(0, 5, [w.astype(np.float64) for w in _weights(r)]), "dtype"),
    (lambda r: _update(0, 5, [np.full(s, np.nan, np.float32) for s in SHAPES]), "non-finite"),
    (lambda r: _update(0, 5, [np.full(s, np.inf, np.float32) for s in SHAPES]), "non-finite"),
    (lambda r: _update(0, 11), "exceeds the client's shard"),
    (lambda r: _update(0, 0), "positive integer"),
    (lambda r: _update(0, 2.5), "positive integer"),
    (lambda r: _update(1, 5), "does not match"),
    (lambda r: b"garbage", "magic"),
])
def test_deliver_rejects_bad_updates(coord, body_fn, reason):
    code, why = coord.deliver(coord.state.seq, 0, body_fn(np.random.default_rng(0)))
    assert code == 400 and reason in why
    assert coord.state.updates == {}                        # the model's inputs are untouched
    assert coord.state.dropped[0].startswith("rejected: ")  # and the drop is recorded with a reason


def test_closed_round_and_unsampled_client():
    c = Coordinator(TOKEN, SHAPES, [10, 20, 30], ())
    c.open_round(1, [1], np.zeros(c.size, np.float32), {}, {})
    assert c.deliver(c.state.seq, 0, _update(0, 5))[0] == 400
    c.close_round()
    assert c.deliver(c.state.seq, 1, _update(1, 5))[0] == 409
    assert c.state.dropped == {1: "timeout"} and c.state.updates == {}


@pytest.fixture
def http_server(coord):
    srv = make_http_server(coord, "127.0.0.1", 0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield coord, srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_http_rejects_unauthenticated(http_server):
    coord, port = http_server
    for token in (b"wrong", b""):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        headers = {"Authorization": "Bearer " + token.decode()} if token else {}
        conn.request("POST", f"/update?seq={coord.state.seq}&id=0", body=_update(0, 5), headers=headers)
        assert conn.getresponse().status == 401
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/task?after=0&ids=0", headers=headers)
        assert conn.getresponse().status == 401
    assert coord.state.updates == {}


def test_http_task_update_and_oversize(http_server):
    coord, port = http_server
    c = Connection("127.0.0.1", port, TOKEN, timeout=10)
    code, body = c.request("GET", "/task?after=0&ids=0,5&proc=p1")
    task = decode(body)
    assert code == 200 and task.meta["round"] == 1 and task.meta["sampled"] == [0, 1, 2]
    assert [t.shape for t in task.group("w")] == SHAPES
    assert c.request("POST", f"/update?seq={task.meta['seq']}&id=0", _update(0, 7))[0] == 200
    big = encode({"client": 1, "examples": 5}, {"w": [np.zeros(coord.max_body, np.uint8)]})
    assert c.request("POST", f"/update?seq={task.meta['seq']}&id=1", big)[0] == 413
    code, _ = c.request("POST", f"/update?seq={task.meta['seq']}&id=2",
                        _update(2, 5, [np.full(s, np.nan, np.float32) for s in SHAPES]))
    assert code == 400
    assert sorted(coord.state.updates) == [0]
    coord.finish("finished")
    code, body = c.request("GET", f"/task?after={task.meta['seq']}&inst={task.meta['instance']}&ids=0&proc=p1")
    assert decode(body).meta["status"] == "finished"


# -- shapes whose size overflows, is negative, exceeds the model or disagrees with the bytes -------
def _with_shape(body, shape):
    _, h = _header(body)
    h["tensors"][0]["shape"] = shape
    return _with_header(body, h)


@pytest.mark.parametrize("shape,match", [
    ([2 ** 62, 2 ** 62], "bad shape"),               # each dim beyond any real tensor
    ([2 ** 30] * 4, "needs"),                       # 2**120 elements: wraps to 0 in int64
    ([2 ** 31 - 1] * 3, "needs"),                   # wraps to a huge positive int64
    ([-1, 3], "bad shape"),
    ([3, -4], "bad shape"),
    ([1] * 40, "bad shape"),                        # more dims than any tensor has
    ([5, 3], "needs 60 bytes"),                     # one row more than the bytes that follow
])
def test_decode_refuses_shapes_that_do_not_fit_the_body(shape, match):
    ws = [np.zeros((4, 3), np.float32)]
    with pytest.raises(TransportError, match=match):
        decode(_with_shape(encode({}, {"w": ws}), shape))


def test_decode_refuses_more_elements_than_the_model():
    body = encode({}, {"w": [np.zeros(40, np.float32)]})
    assert decode(body, max_elements=40).tensors[0].shape == (40,)
    with pytest.raises(TransportError, match="past the model's 39 values"):
        decode(body, max_elements=39)


@pytest.mark.parametrize("shape,reason", [
    ([2 ** 30] * 4, "w/0: shape"), ([2 ** 31 - 1] * 3, "past the model's 23 values"),
    ([1000], "past the model's 23 values"), ([2, 2], "trailing bytes")])
def test_deliver_answers_400_for_an_impossible_shape_and_the_round_goes_on(coord, shape, reason):
    body = _with_shape(_update(0, 5), shape)
    code, why = coord.deliver(coord.state.seq, 0, body)   # used to raise ValueError from reshape
    assert code == 400 and reason in why, why
    assert coord.state.dropped[0].startswith("rejected: ") and coord.state.updates == {}
    assert coord.deliver(coord.state.seq, 1, _update(1, 5))[0] == 200  # the others still count


def test_http_update_with_an_overflowing_shape_is_a_400(http_server):
    coord, port = http_server
    c = Connection("127.0.0.1", port, TOKEN, timeout=10)
    seq = coord.state.seq
    assert c.request("POST", f"/update?seq={seq}&id=0", _with_shape(_update(0, 5), [2 ** 30] * 4))[0] == 400
    assert c.request("POST", f"/update?seq={seq}&id=1", _update(1, 5))[0] == 200   # same connection
    assert sorted(coord.state.updates) == [1]
