"""The exchange simulator: Binance spot REST + kline websocket, deterministic, with faults.

See SPEC §10.2. Typical test use::

    async with run_simulator(Scenario(seed=7)) as sim:
        ex = create_exchange("binance", urls={"rest": sim.base_url, "ws": sim.ws_url})
"""

from qmtl.services.exchange_sim.app import USED_WEIGHT_HEADER, create_app
from qmtl.services.exchange_sim.bars import Bars, forming_bar, generate_bars
from qmtl.services.exchange_sim.request_log import KlinesRecord, RequestLog, RequestRecord
from qmtl.services.exchange_sim.scenario import (
    MalformedWindow,
    MarketScenario,
    Outage,
    PageFault,
    Scenario,
    TimeSpan,
)
from qmtl.services.exchange_sim.server import SimulatorServer, run_simulator
from qmtl.services.exchange_sim.weights import ENDPOINT_WEIGHTS, WeightLimiter

__all__ = [
    "ENDPOINT_WEIGHTS",
    "USED_WEIGHT_HEADER",
    "Bars",
    "KlinesRecord",
    "MalformedWindow",
    "MarketScenario",
    "Outage",
    "PageFault",
    "RequestLog",
    "RequestRecord",
    "Scenario",
    "SimulatorServer",
    "TimeSpan",
    "WeightLimiter",
    "create_app",
    "forming_bar",
    "generate_bars",
    "run_simulator",
]
