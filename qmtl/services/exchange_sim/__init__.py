"""The exchange simulator: Binance spot REST + kline websocket, Binance USD-M futures and
OKX v5 REST on one port, and Binance's public-data kline archives under ``/data/``;
deterministic, with faults.

The scenario format is in ``docs/simulator.md``. Typical test use::

    async with run_simulator(Scenario(seed=7)) as sim:
        ex = create_exchange("binance", urls={"rest": sim.base_url, "ws": sim.ws_url})
        usdm = create_exchange("binanceusdm", urls={"rest": sim.base_url}, market_type="swap")
        okx = create_exchange("okx", urls={"rest": sim.base_url})
"""

from qmtl.services.exchange_sim.app import create_app
from qmtl.services.exchange_sim.archive_names import ArchiveName, parse_archive_path
from qmtl.services.exchange_sim.bars import Bars, forming_bar, generate_bars
from qmtl.services.exchange_sim.request_log import (
    ARCHIVE_VENUE,
    KlinesRecord,
    RequestLog,
    RequestRecord,
)
from qmtl.services.exchange_sim.scenario import (
    MalformedWindow,
    MarketScenario,
    Outage,
    PageFault,
    Scenario,
    TimeSpan,
)
from qmtl.services.exchange_sim.scenario_archive import ArchiveSettings, PublishDelay
from qmtl.services.exchange_sim.scenario_venues import (
    VENUE_IDS,
    BinanceUsdmSettings,
    OkxRateLimits,
    OkxSettings,
    SpotSettings,
    VenueId,
    Venues,
)
from qmtl.services.exchange_sim.server import SimulatorServer, run_simulator
from qmtl.services.exchange_sim.venue_gates import USED_WEIGHT_HEADER
from qmtl.services.exchange_sim.weights import ENDPOINT_WEIGHTS, WeightLimiter

__all__ = [
    "ARCHIVE_VENUE",
    "ENDPOINT_WEIGHTS",
    "USED_WEIGHT_HEADER",
    "VENUE_IDS",
    "ArchiveName",
    "ArchiveSettings",
    "Bars",
    "BinanceUsdmSettings",
    "KlinesRecord",
    "MalformedWindow",
    "MarketScenario",
    "OkxRateLimits",
    "OkxSettings",
    "Outage",
    "PageFault",
    "PublishDelay",
    "RequestLog",
    "RequestRecord",
    "Scenario",
    "SimulatorServer",
    "SpotSettings",
    "TimeSpan",
    "VenueId",
    "Venues",
    "WeightLimiter",
    "create_app",
    "forming_bar",
    "generate_bars",
    "parse_archive_path",
    "run_simulator",
]
