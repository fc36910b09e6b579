"""privsplit's architecture as data: the ONE place where the allowed import directions live.

``tests/test_architecture.py`` enforces these rules on every module's imports (read with ``ast``, top-level
and inside functions), and checks that ``docs/architecture.md`` shows the table :func:`markdown` renders
from them, so the picture in the docs cannot drift from what is enforced. ``python tests/test_architecture.py``
prints today's package graph and that table.

To change the architecture, change this file (say why in the rule), then run
``python tests/architecture_rules.py`` to rewrite the tables in the doc.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the bottom: every layer above may use these (metrics excepted: they stay pure tensor functions)
FOUNDATION = frozenset({"registry", "config", "progress", "errors", "markdown", "lazy"})

_TRAIN = FOUNDATION | {"data", "models", "metrics"}
_DEFENSES = _TRAIN | {"train"}
_ATTACKS = _DEFENSES | {"defenses"}
_AUDIT = _ATTACKS | {"attacks"}
_REPORT = _AUDIT | {"audit", "backbone", "edge"}

#: subpackage (or top-level module) of privsplit -> (the other subpackages it may import, why).
#: Its own subpackage and the package root ``privsplit`` (``__version__``) are always allowed.
#: Listed bottom-up; ``LAYERS`` must stay a DAG (tested).
LAYERS: dict[str, tuple[frozenset[str], str]] = {
    "registry": (frozenset(), "name -> factory map that every layer registers into; importing anything would "
                              "make it a cycle hazard"),
    "config": (frozenset(), "paths and environment settings read by every layer"),
    "progress": (frozenset(), "progress bars any long step may show"),
    "errors": (frozenset(), "exceptions every layer raises (MissingDependency names the extra to install)"),
    "lazy": (frozenset(), "lazy facades (module __getattr__) so importing a package loads nothing behind it"),
    "markdown": (frozenset(), "the one markdown-table helper every report (edge costs, the paper report) uses"),
    "metrics": (frozenset({"errors"}), "pure tensor functions (scores in, numbers out), tested against naive twins "
                             "without a model or data"),
    "models": (FOUNDATION, "architectures and the split know no datasets, training or defences: the device "
                           "rebuilds a model from a bundle alone"),
    "data": (FOUNDATION, "faces, manifests, splits, preprocessing know no model, so one pipeline feeds "
                         "training, attacks and the device"),
    "train": (_TRAIN, "fits models on data; knows nothing of the defences and attacks built on top of it"),
    "backbone": (_TRAIN | {"train"}, "identity-bearing pretraining (distillation, margin losses, converted "
                                     "weights) built on train's loops; only report and cli use it"),
    "defenses": (_DEFENSES, "embeddings (Siamese fine-tuning uses train) and bundles; never sees an attack, so "
                            "no defence is tuned on the attacker's identities"),
    "attacks": (_ATTACKS, "the attacker holds the bundles (defenses) and trains heads (train); it knows "
                          "nothing of the audit that runs it or the reports that show it"),
    "audit": (_AUDIT, "runs the attack suite on a bundle and gates it; below report and cli so a team's CI "
                      "can use it without the paper's report pipeline"),
    "edge": (FOUNDATION | {"data", "models", "defenses"}, "exports and costs the client half exactly as it "
                                                          "ships: no training, attack or serving code"),
    "runtime": (FOUNDATION | {"data", "models", "defenses", "edge"},
                "the shipped halves (device client, service) load bundles, preprocessing and the checked ONNX "
                "extractor (edge), nothing that trains, attacks or reports"),
    "report": (_REPORT, "the paper's tables and figures, computed in-process from every layer below; never "
                        "the CLI nor the network runtime"),
    "cli": (_REPORT | {"runtime", "report"},
            "the top: one module per command wiring the layers together; nothing imports it"),
}

#: the service's modules: the REST server, Triton, the shared service, its routes, the gRPC servers (both
#: engines) and the worker processes
SERVICE = ("privsplit.runtime.server", "privsplit.runtime.triton", "privsplit.runtime.service",
           "privsplit.runtime.routes", "privsplit.runtime.grpc_server", "privsplit.runtime.grpc_native",
           "privsplit.runtime.workers")

#: What the device client must never load (itself or through anything it imports). Also checked at run
#: time: ``import privsplit.runtime.client`` in a fresh interpreter must leave none of these in sys.modules.
CLIENT_DENY = ("privsplit.train", "privsplit.attacks", "privsplit.audit", "privsplit.report", "privsplit.cli",
               "privsplit.backbone", "privsplit.defenses.build", *SERVICE, "privsplit.runtime.batching",
               "privsplit.runtime.metrics", "fastapi", "starlette", "uvicorn", "pytriton", "typer")

_SERVICE_DENY = ("privsplit.train", "privsplit.attacks", "privsplit.audit", "privsplit.report", "privsplit.cli",
                 "privsplit.backbone", "privsplit.defenses.build", "privsplit.runtime.client", "typer")


@dataclass(frozen=True)
class Rule:
    """A constraint beyond the layer table.

    ``who``: module prefixes it applies to (``unless``: prefixes exempted). ``deny``: module prefixes they
    must not import. ``external_only``: if set, the only non-stdlib, non-privsplit packages they may import.
    ``closure``: apply to everything ``who`` loads, following imports transitively (and the parent packages
    Python runs on the way), not only to its own import lines.
    """

    name: str
    who: tuple[str, ...]
    why: str
    deny: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    external_only: tuple[str, ...] | None = None
    closure: bool = False


RULES: tuple[Rule, ...] = (
    Rule("device-client", ("privsplit.runtime.client",), closure=True, deny=CLIENT_DENY,
         why="the phone ships the client and what it imports: no training, attack, audit, report, CLI, server "
             "or web-framework code"),
    Rule("service", SERVICE, closure=True, deny=_SERVICE_DENY,
         why="the analyzer service runs no training, attack, audit or report code, and never the device's "
             "extractor: it sees only what the device sends"),
    Rule("models-know-no-data", ("privsplit.models",), deny=("privsplit.data",),
         why="a model is built from its config alone, so the device and the server need no dataset code"),
    Rule("metrics-pure", ("privsplit.metrics",), external_only=("torch", "numpy"),
         why="metrics are pure tensor functions: torch, numpy and the standard library only"),
    Rule("defenses-blind-to-attacks", ("privsplit.defenses",),
         deny=("privsplit.attacks", "privsplit.audit", "privsplit.report"),
         why="a defence never imports the attacks that judge it (attack identities never touch its fitting)"),
    Rule("audit-below-report", ("privsplit.audit",), deny=("privsplit.report", "privsplit.cli"),
         why="the audit is a library a team's CI calls; reports and the CLI are built on it, not under it"),
    Rule("only-cli-knows-the-cli", ("privsplit",), unless=("privsplit.cli",), deny=("typer", "privsplit.cli"),
         why="only cli/ knows the command line (typer); library code raises errors the CLI turns into one line"),
)

#: modules a rule names before they exist (being written on another branch): a rule whose ``who`` matches no
#: module is an error (a renamed module would silently escape it) unless listed here
PLANNED = frozenset({"privsplit.audit", "privsplit.backbone"})

#: (importing module, imported module prefix) -> why this edge is accepted although a rule forbids it.
#: It is skipped by the direct checks and when following imports for a closure rule.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("privsplit.metrics.image", "torchmetrics"):
        "reference SSIM/PSNR, imported inside the function; torchmetrics.functional is itself pure tensor "
        "functions",
    ("privsplit.train.run", "privsplit.backbone"):
        "`train --init BACKBONE` (backbone branch) loads the pretrained weights inside run_training, lazily; "
        "backbone.init itself needs only models and train.artifacts. To drop this: move that loader into train/",
    ("privsplit.defenses", "privsplit.defenses.build"):
        "lazy re-export in defenses/__init__.py's __getattr__ of the training-side names (build_embedding...); "
        "the client and the service never ask for them (the sys.modules test proves it for the client)",
}


def markdown() -> str:
    """The layer table and the rules as markdown (``docs/architecture.md`` must contain it verbatim)."""
    lines = ["| layer | may import (besides itself and `privsplit.__version__`) | why |", "|---|---|---|"]
    for pkg, (allowed, why) in LAYERS.items():
        names = ", ".join(sorted(allowed)) if allowed else "—"
        lines.append(f"| `{pkg}` | {names} | {why} |")
    lines += ["", "| rule | applies to | forbids | why |", "|---|---|---|---|"]
    for r in RULES:
        who = ", ".join(f"`{w}`" for w in r.who) + (f" except `{', '.join(r.unless)}`" if r.unless else "")
        who += " and everything it loads" if r.closure else ""
        forbids = ", ".join(f"`{d}`" for d in r.deny) if r.deny else ""
        if r.external_only is not None:
            forbids = "any package but " + ", ".join(f"`{e}`" for e in r.external_only) + " and the stdlib"
        lines.append(f"| {r.name} | {who} | {forbids} | {r.why} |")
    lines += ["", "| accepted exception | why |", "|---|---|"]
    lines += [f"| `{a}` → `{b}` | {why} |" for (a, b), why in EXCEPTIONS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python tests/architecture_rules.py: rewrite the tables in docs/architecture.md
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
    text = doc.read_text()
    head = "## The rules (rendered from `tests/architecture_rules.py`)\n\n"
    start, end = text.index(head) + len(head), text.index("\n## Notes")
    doc.write_text(text[:start] + markdown() + text[end:])
    print(f"updated {doc}")
