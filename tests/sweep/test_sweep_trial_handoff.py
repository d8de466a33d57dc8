"""The in-process trial's hand-off between its training thread and Tune (no Ray needed).

Training runs ahead of Tune: records queue up while Tune's scheduler decides on earlier ones.
Before a run's measures and ``outcome.json`` the thread must wait for Tune's verdict on its last
record, or a trial ASHA stopped at one of its last records would still finish and be measured.
"""

from __future__ import annotations

import threading

from hybridft.sweep.trial import InProcessTrial, TrialStopped


class ScriptedTrial(InProcessTrial):
    """The real hand-off (``_emit``, ``_confirm``, ``step``, ``_halt``) around a scripted run:
    two records, then the barrier, then the "measures"."""

    def setup(self, config):  # no plan: the script stands in for trial_body
        self.measured = threading.Event()
        self._start(config)

    def _train(self, config) -> None:
        try:
            self._emit({"iteration": 1})
            self._emit({"iteration": 2})
            self._confirm()
            self.measured.set()
            self._events.put(("final", {"done": True, "objectives": {"val_loss": 1.0}}))
        except TrialStopped:
            self._events.put(("stopped", {"done": True}))


def test_the_run_is_measured_only_after_tune_asks_for_more() -> None:
    trial = ScriptedTrial(config={})
    try:
        assert trial.step() == {"iteration": 1}
        assert trial.step() == {"iteration": 2}
        # Tune holds record 2 (its scheduler is deciding): the thread waits at the barrier
        assert not trial.measured.wait(0.3)
        assert trial.step() == {"done": True, "objectives": {"val_loss": 1.0}}  # Tune went on
        assert trial.measured.is_set()
    finally:
        trial.cleanup()


def test_a_trial_stopped_at_its_last_record_is_never_measured() -> None:
    trial = ScriptedTrial(config={})
    assert trial.step() == {"iteration": 1}
    assert trial.step() == {"iteration": 2}
    trial.cleanup()  # ASHA stops the trial on record 2: Tune calls stop(), never step() again
    assert not trial._thread.is_alive()
    assert not trial.measured.is_set()
    assert trial._events.get_nowait() == ("stopped", {"done": True})


def test_records_queued_ahead_do_not_open_the_barrier() -> None:
    """Tune asking for the next result while earlier records are still queued is no verdict on
    the last one: the barrier waits until every record was taken."""
    trial = ScriptedTrial(config={})
    try:
        while trial._events.qsize() < 2:  # both records emitted before Tune takes any
            threading.Event().wait(0.01)
        assert trial.step() == {"iteration": 1}
        assert not trial.measured.wait(0.3)
        assert trial.step() == {"iteration": 2}
        assert not trial.measured.wait(0.3)
        assert trial.step()["done"] is True
        assert trial.measured.is_set()
    finally:
        trial.cleanup()
