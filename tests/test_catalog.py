"""One dated catalog of hardware facts (memory/hardware.py): Jobs prices come from the Hub's live hardware listing
when it has been read (here: a copy of it, tests/data/jobs_hardware_listing.json, in the listing's own format,
``GET /api/jobs/hardware`` as huggingface_hub's JobHardwareInfo reads it) and from the dated offline table
otherwise; ZeroGPU's 2026 facts feed the estimator and the quota planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune import memory
from finetune.backends import zerogpu

LISTING = Path(__file__).parent / "data" / "jobs_hardware_listing.json"


@pytest.fixture(autouse=True)
def offline_prices():
    memory.forget_live_prices()
    yield
    memory.forget_live_prices()


def listing() -> list[dict]:
    return json.loads(LISTING.read_text(encoding="utf-8"))


def test_jobs_prices_come_from_the_listing_when_read_else_from_the_dated_table():
    assert memory.CATALOG_DATE in memory.prices_source() and "offline" in memory.prices_source()
    spec = memory.load_model_spec("")
    offline = memory.estimate_time(spec, memory.default_setup(memory.get_gpu("t4")), "t4", tokens=10_000_000)

    prices = memory.parse_jobs_hardware(listing())
    assert prices["t4-small"] == pytest.approx(0.40, abs=0.001) and prices["h200"] == pytest.approx(5.0, abs=0.001)
    assert prices["cpu-basic"] == pytest.approx(0.01, abs=0.001)

    # the listing's prices are the ones used: a listing whose T4 price doubled doubles the estimate's cost
    changed = listing()
    for item in changed:
        if item["name"] == "t4-small":
            item["unitCostMicroUSD"] *= 2
            item["unitCostUSD"] *= 2
    memory.refresh_jobs_prices(changed)
    assert memory.get_gpu("t4").usd_per_hour == pytest.approx(0.80, abs=0.001)
    live = memory.estimate_time(spec, memory.default_setup(memory.get_gpu("t4")), "t4", tokens=10_000_000)
    assert live.usd == pytest.approx(2 * offline.usd, rel=0.01)
    assert "read live" in memory.prices_source()
    assert memory.get_gpu("rtx-pro-6000").usd_per_hour is None  # not in the listing: still unknown, not guessed

    memory.forget_live_prices()
    assert memory.get_gpu("t4").usd_per_hour == pytest.approx(0.40)


def test_listing_units_and_gaps():
    assert memory.parse_jobs_hardware([{"name": "x", "unitCostMicroUSD": 1_000_000, "unitLabel": "hour"},
                                       {"name": "y", "unitCostUSD": 0.01, "unitLabel": "second"},
                                       {"name": "z", "unitLabel": "minute"},
                                       {"name": "w", "unitCostUSD": 1.0, "unitLabel": "fortnight"}]) == {"x": 1.0, "y": 36.0}
    with pytest.raises(memory.EstimateError, match="offline"):
        memory.refresh_jobs_prices()  # HF_HUB_OFFLINE=1 in the tests: nothing is fetched


def test_zerogpu_facts_of_2026_feed_the_estimator_and_the_quota_planner():
    z = memory.ZEROGPU
    assert "RTX Pro 6000 Blackwell" in z.card
    assert memory.get_gpu(z.sizes["large"]).nominal_gb == 48 and memory.get_gpu(z.sizes["xlarge"]).nominal_gb == 96
    assert memory.get_gpu(z.sizes["xlarge"]).zerogpu_quota_factor == 2 * memory.get_gpu(z.sizes["large"]).zerogpu_quota_factor
    assert z.daily_quota_min == {"unauthenticated": 2, "free": 5, "pro": 40, "team": 40, "enterprise": 60}
    assert z.usd_per_10_min_beyond_quota == 1.0 and z.default_call_s == 60 and z.max_call_s == 300
    assert not z.torch_compile
    assert zerogpu.FIRST_CALL_S == z.default_call_s and zerogpu.MAX_CALL_S == z.max_call_s
    q = zerogpu.quota_estimate(max_steps=100, per_step_s=1.2)
    assert set(q["share_of_daily_quota"]) == set(z.daily_quota_min)
    est = memory.estimate_time(memory.load_model_spec(""), memory.default_setup(memory.get_gpu("zerogpu-xlarge")),
                               "zerogpu-xlarge", tokens=1_000_000)
    assert est.zerogpu_days["enterprise"] == pytest.approx(est.zerogpu_quota_minutes / 60, abs=0.01)


def test_the_live_listing_is_fetched_over_http_as_huggingface_hub_reads_it(monkeypatch):
    """The recorded copy served where the Hub's listing lives: the prices are fetched with huggingface_hub's own
    session (no network here, so a local server stands in for the Hub), and they equal what huggingface_hub's
    ``list_jobs_hardware`` makes of the same answer."""
    import http.server
    import threading

    from huggingface_hub import HfApi, constants

    body = LISTING.read_bytes()
    asked: list[str] = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            asked.append(self.path)
            ok = self.path == "/api/jobs/hardware"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if ok else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        prices = memory.refresh_jobs_prices()
        assert asked == ["/api/jobs/hardware"]
        theirs = {h.name: h for h in HfApi(endpoint=endpoint, token=False).list_jobs_hardware()}
        assert set(prices) == set(theirs)
        for name, per_hour in prices.items():
            assert theirs[name].unit_label == "minute"
            assert per_hour == pytest.approx(theirs[name].unit_cost_usd * 60, abs=1e-3), name
        assert memory.get_gpu("t4").usd_per_hour == pytest.approx(prices["t4-small"])
        assert "read live" in memory.prices_source()

        monkeypatch.setattr(constants, "ENDPOINT", endpoint + "/nowhere")  # a 404: the offline table stays
        memory.forget_live_prices()
        with pytest.raises(memory.EstimateError, match="cannot be read"):
            memory.refresh_jobs_prices()
        assert "offline" in memory.prices_source()
    finally:
        server.shutdown()
        server.server_close()
