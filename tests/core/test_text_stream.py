from src.core.text_stream import IncrementalText, StopMatcher


def feed_all(stream: IncrementalText, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces)


def test_multibyte_character_split_across_tokens():
    data = "héllo 日本".encode()
    pieces = [data[i:i + 1] for i in range(len(data))]  # one byte per token
    stream = IncrementalText()
    out = []
    for piece in pieces:
        out.append(stream.feed(piece))
    assert "".join(out) + stream.finish() == "héllo 日本"
    assert all("\ufffd" not in o for o in out)


def test_dangling_bytes_at_end_become_replacement():
    stream = IncrementalText()
    assert stream.feed("é".encode()[:1]) == ""
    assert stream.finish() == "\ufffd"


def test_stop_string_across_pieces_is_never_emitted():
    stream = IncrementalText(["STOP"])
    out = feed_all(stream, [b"abc S", b"T", b"O", b"P and more"])
    assert out == "abc " and stream.stopped


def test_held_back_prefix_released_when_it_is_not_a_stop():
    stream = IncrementalText(["STOP"])
    assert stream.feed(b"xx ST") == "xx "
    assert stream.feed(b"ATE") == "STATE"
    assert stream.finish() == ""


def test_prefix_pending_at_the_end_is_flushed():
    stream = IncrementalText(["STOP"])
    assert stream.feed(b"go ST") == "go "
    assert stream.finish() == "ST"


def test_earliest_of_several_stops_wins():
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == ("hel", True)
