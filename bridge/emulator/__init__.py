"""An emulator of the OpenAI fine-tuning API, for tests, demos and benchmarks.

with Emulator(Scenario.demo(), api_key="sk-test") as emu:
    client = OpenAI(base_url=emu.base_url, api_key="sk-test")
"""

from bridge.emulator.emulator import Emulator
from bridge.emulator.faults import Faults
from bridge.emulator.scenario import JobScenario, Scenario

__all__ = ["Emulator", "Faults", "JobScenario", "Scenario"]
