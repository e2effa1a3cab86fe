import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_api_keys_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("JOBFORMER_API_KEYS", " k1-aaaaaaaaaaaaaaaa , k2-bbbbbbbbbbbbbbbb,")
    assert Settings().api_keys == ["k1-aaaaaaaaaaaaaaaa", "k2-bbbbbbbbbbbbbbbb"]


def test_sqlite_in_the_data_dir_by_default(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/jobformer.db"


@pytest.mark.parametrize("keys", [[], ["change-me-placeholder-key"], ["short"]])
def test_production_refuses_placeholder_or_missing_keys(keys):
    with pytest.raises(ValidationError, match="JOBFORMER_API_KEYS"):
        Settings(environment="production", api_keys=keys)


def test_production_accepts_real_keys():
    assert Settings(environment="production", api_keys=["Zq3v9T1kLr8pWm2xYc7nBh4d"]).api_keys


def test_lease_must_fit_between_heartbeat_and_timeout() -> None:
    assert Settings(heartbeat_seconds=5, heartbeat_timeout_seconds=60).lease_bound_seconds == 32.5
    assert (
        Settings(heartbeat_seconds=1, heartbeat_timeout_seconds=10, lease_seconds=4).lease_bound_seconds == 4
    )
    for lease in (0.5, 10, 12):  # not above the heartbeat, or not below the reaper's timeout
        with pytest.raises(ValueError, match="JOBFORMER_LEASE_SECONDS"):
            Settings(heartbeat_seconds=1, heartbeat_timeout_seconds=10, lease_seconds=lease)
