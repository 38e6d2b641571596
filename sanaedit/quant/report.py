"""What quantization did, per layer: size before/after and weight error."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LayerReport:
    name: str
    kind: str
    shape: tuple[int, ...]
    bits: int
    group_size: int | None
    float_bytes: int  # fp32
    quant_bytes: int  # codes + scales + zero points
    rel_error: float  # ||W - Wq|| / ||W||
    max_abs_error: float


@dataclass
class QuantReport:
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def float_bytes(self) -> int:
        return sum(layer.float_bytes for layer in self.layers)

    @property
    def quant_bytes(self) -> int:
        return sum(layer.quant_bytes for layer in self.layers)

    @property
    def worst(self) -> LayerReport | None:
        return max(self.layers, key=lambda layer: layer.rel_error, default=None)

    def to_dict(self) -> dict:
        return {
            "float_bytes": self.float_bytes,
            "quant_bytes": self.quant_bytes,
            "layers": [asdict(layer) for layer in self.layers],
        }

    def table(self, limit: int | None = None) -> str:
        """A plain-text table, worst relative error first."""
        rows = sorted(self.layers, key=lambda layer: -layer.rel_error)[:limit]
        lines = [f"{'layer':<48} {'kind':<7} {'bits':>4} {'group':>5} {'fp32 KB':>10} {'quant KB':>9} {'rel err':>9}"]
        for r in rows:
            group = "ch" if r.group_size is None else str(r.group_size)
            lines.append(
                f"{r.name[-48:]:<48} {r.kind[:7]:<7} {r.bits:>4} {group:>5} {r.float_bytes / 1024:>10.1f} "
                f"{r.quant_bytes / 1024:>9.1f} {r.rel_error:>9.2e}"
            )
        ratio = self.float_bytes / max(self.quant_bytes, 1)
        lines.append(
            f"total: {len(self.layers)} layers, {self.float_bytes / 2**20:.2f} MiB fp32 -> "
            f"{self.quant_bytes / 2**20:.2f} MiB ({ratio:.2f}x smaller)"
        )
        return "\n".join(lines)
