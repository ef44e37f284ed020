"""Developer tooling: ``streamtoll demo``, ``streamtoll up``, ``streamtoll bench …`` and what they share.

* ``demo``, ``demo_gateway`` — the main job end to end on a fresh database (``make demo``), and
  its gateway leg: real clients through ``streamtoll gateway``, billed and checked.
* ``up`` — everything running locally as supervised children, with sample data and generated
  client traffic. It belongs here: it loads samples into an embedded database, creates ``demo.*``
  topics and writes to them; production runs each process on its own (``deploy/``), and no
  production module imports ``up``.
* ``bench``, ``bench_billing``, ``bench_gateway`` — the benchmarks (``make bench``).
* ``traffic`` — the audit traffic generator with its own ground truth, and readers of metering's
  output topics; ``gateway_clients`` — real Kafka clients through the gateway, and the broker read
  straight with Fetch requests. The tests use both too.

Why a package of its own: these modules ship in the wheel, so ``pip install .`` runs every
command, but they are not the product. Kept apart, the production import path (``metering``,
``billing``, ``gateway`` and the rest of ``streamtoll``) neither loads nor depends on them.
What both sides need (``free_port``, the embedded broker and PostgreSQL) lives in production
modules (``streamtoll.embedded``) and is imported from there.

The rule: no production module imports ``streamtoll.dev``; modules here may import anything.
``pyproject.toml`` (``[tool.importlinter]``) checks it. The one exception is the command line's
dev commands (``cmd_demo``, ``cmd_up``, ``cmd_bench_*`` in ``streamtoll.cli``), which import
their module inside the command function, so only running that command loads it; the contract
lists exactly those imports under ``ignore_imports``, and a unit test checks that loading the
command line loads nothing from here. The command bodies stay in ``streamtoll.cli`` rather than
moving here behind one import: they are composition-root code (settings, the embedded parts, a
fresh database, the billing wiring of ``streamtoll up``) that the other commands share.
"""
