import threading

from camwidgets.widgets._runner import LatestRunner


def test_rapid_submits_run_first_and_last_only():
    release = threading.Event()
    seen = []
    runner = LatestRunner()

    def job(v):
        def run():
            if v == 0:
                release.wait(5)  # hold the worker while 99 more values arrive
            seen.append(v)
        return run

    for v in range(100):
        runner.submit(job(v))
    assert runner.busy and runner.superseded()
    release.set()
    assert runner.wait(5)
    assert seen == [0, 99]
    assert runner.started == 2 and runner.submitted == 100
    assert not runner.busy


def test_errors_are_reported_and_the_runner_keeps_working():
    errors, seen = [], []
    runner = LatestRunner(on_error=errors.append)
    runner.submit(lambda: 1 / 0)
    runner.wait(5)
    runner.submit(lambda: seen.append("ok"))
    runner.wait(5)
    assert isinstance(errors[0], ZeroDivisionError) and isinstance(runner.last_error, ZeroDivisionError)
    assert seen == ["ok"]


def test_synchronous_mode_runs_inside_submit():
    seen = []
    runner = LatestRunner(background=False)
    runner.submit(lambda: seen.append(threading.current_thread() is threading.main_thread()))
    assert seen == [True] and not runner.busy
