"""The peer watch of a multi-process run: beats, a silent peer, a store that stopped answering."""

from charjax.peers import KEY, PeerWatch


class Store:
    """The coordination service's key-value store, as the watch uses it."""

    def __init__(self):
        self.values, self.down = {}, False

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        self.values[key] = value

    def key_value_try_get(self, key):
        if self.down:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        if key not in self.values:
            raise KeyError(key)
        return self.values[key]


def _watch(store, me=0, count=3, timeout=10.0):
    now = [0.0]
    watch = PeerWatch(store, me, count, timeout, on_lost=None, clock=lambda: now[0])
    return watch, now


def test_beating_peers_are_never_lost_and_a_silent_one_is_after_the_timeout():
    store = Store()
    watch, now = _watch(store)
    for t in range(1, 40):
        now[0] = float(t)
        store.values[KEY.format(1)] = str(t)  # process 1 beats
        if t < 8:
            store.values[KEY.format(2)] = str(t)  # process 2 stops beating at t = 7
        lost = watch.check()
        if lost is not None:
            break
    assert lost == 2 and now[0] == 18.0  # its last beat was seen at 7: 7 + 10 < 18
    assert store.values[KEY.format(0)] == str(18)  # this process beat every time


def test_a_peer_that_never_starts_is_lost_and_a_dead_store_means_process_0():
    store = Store()
    watch, now = _watch(store, me=1, count=2)
    now[0] = 10.5
    assert watch.check() == 0  # process 0 never beat within the timeout
    store = Store()
    watch, now = _watch(store, me=1, count=2)
    store.values[KEY.format(0)] = "1"
    now[0] = 1.0
    assert watch.check() is None
    store.down = True
    now[0] = 2.0
    assert watch.check() is None  # not answering for a moment is not lost
    now[0] = 12.5
    assert watch.check() == 0
