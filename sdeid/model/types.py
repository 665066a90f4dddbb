"""Plain values that go in and out of the dispatcher model."""

from __future__ import annotations

from dataclasses import dataclass, field

from sdeid.model.abi import (
    MPIDR_AFF_MASK,
    PPI_FIRST,
    PPI_LAST,
    SAVED_GPREGS,
    SPI_FIRST,
    EventType,
    Priority,
)

# RegisterUpdate.mask bits, the same numbering the wire protocol uses.
REG_PC = 18
REG_PSTATE = 19
REG_ELR = 20
REG_SPSR = 21

ZERO_X = (0,) * SAVED_GPREGS


@dataclass(frozen=True, slots=True)
class Context:
    """What a vCPU sends when it pulls a dispatch: where it was interrupted."""

    x: tuple[int, ...]
    pc: int
    pstate: int
    sctlr_el1: int = 0
    vbar_el1: int = 0
    sctlr_el2: int = 0
    vbar_el2: int = 0

    def __post_init__(self) -> None:
        if len(self.x) != SAVED_GPREGS:
            raise ValueError(f"context needs {SAVED_GPREGS} registers, got {len(self.x)}")


@dataclass(frozen=True, slots=True)
class RegisterUpdate:
    """Registers a vCPU must write: bit n of mask selects xn (n < 18), then
    PC, PSTATE, ELR_ELn and SPSR_ELn (n = the EL of the new PSTATE)."""

    mask: int = 0
    x: tuple[int, ...] = ZERO_X
    pc: int = 0
    pstate: int = 0
    elr: int = 0
    spsr: int = 0

    @classmethod
    def result(cls, x0: int) -> RegisterUpdate:
        return cls(mask=1, x=(x0 & (2**64 - 1),) + ZERO_X[1:])

    def writes(self, bit: int) -> bool:
        return bool(self.mask & (1 << bit))


NOTHING = RegisterUpdate()


@dataclass(frozen=True, slots=True)
class Kick:
    """Ask PE `pe` to pull a dispatch at its next safe point."""

    pe: int


@dataclass(frozen=True, slots=True)
class ClaimLine:
    """Divert interrupt `intid` (of PE `pe` for a PPI) to the dispatcher."""

    intid: int
    pe: int


@dataclass(frozen=True, slots=True)
class ReleaseLine:
    """Hand interrupt `intid` (of PE `pe` for a PPI) back to the GIC."""

    intid: int
    pe: int


Effect = Kick | ClaimLine | ReleaseLine


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """The answer to one SDEI call: registers to write, messages to send,
    and whether the caller should pull a dispatch before running on."""

    update: RegisterUpdate
    effects: tuple[Effect, ...] = ()
    pull: bool = False


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """The answer to a pull: a handler entry (update.mask != 0) or nothing."""

    update: RegisterUpdate
    event: int | None = None
    effects: tuple[Effect, ...] = ()
    pull: bool = False


@dataclass(frozen=True, slots=True)
class Topology:
    """The VM's PEs, by index, with their MPIDRs; and its SPI count."""

    mpidrs: tuple[int, ...]
    nr_spis: int = 64

    def __post_init__(self) -> None:
        if not 1 <= len(self.mpidrs) <= 512:
            raise ValueError(f"1 to 512 PEs are supported, got {len(self.mpidrs)}")
        keys = [m & MPIDR_AFF_MASK for m in self.mpidrs]
        if len(set(keys)) != len(keys):
            raise ValueError("two PEs share an MPIDR affinity")
        if not 0 <= self.nr_spis <= 988:
            raise ValueError(f"nr_spis must be 0..988, got {self.nr_spis}")

    @classmethod
    def linear(cls, nr_pes: int, nr_spis: int = 64) -> Topology:
        """QEMU virt's numbering: Aff0 = index % 8, Aff1 = index // 8."""
        return cls(tuple(((i // 8) << 8) | (i % 8) for i in range(nr_pes)), nr_spis)

    @property
    def nr_pes(self) -> int:
        return len(self.mpidrs)

    def is_ppi(self, intid: int) -> bool:
        return PPI_FIRST <= intid <= PPI_LAST

    def is_spi(self, intid: int) -> bool:
        return SPI_FIRST <= intid < SPI_FIRST + self.nr_spis


@dataclass(frozen=True, slots=True)
class EventDef:
    """An event the platform offers.  `slot` is set for events that
    INTERRUPT_BIND hands out (dynamic events); they exist from start-up but
    cannot be registered until bound.  `intid` is set for a static event
    backed by a device interrupt (an SPI for a shared event, a PPI for a
    private one): the dispatcher owns that line from start-up."""

    number: int
    type: EventType
    priority: Priority = Priority.NORMAL
    slot: int | None = None
    intid: int | None = None

    @property
    def dynamic(self) -> bool:
        return self.slot is not None


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    """Everything fixed at start-up besides the topology."""

    version_minor: int = 1
    private_slots: int = 16
    shared_slots: int = 32
    static_events: tuple[EventDef, ...] = field(default_factory=tuple)

    PRIVATE_SLOT_BASE = 1000
    SHARED_SLOT_BASE = 2000
