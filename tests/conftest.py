import pytest

pytest_plugins = ["tests.kafka_fixture", "tests.postgres_fixture"]


@pytest.fixture
def system(kafka_broker, tmp_path, request):
    """A system of real processes on the session's broker; everything is stopped afterwards."""
    from tests.harness import System

    sut = System(tmp_path, kafka_broker.bootstrap)
    yield sut
    sut.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\nlogs of the failed test: {sut.logs}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
