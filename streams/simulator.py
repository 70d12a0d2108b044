"""A deterministic, realistic multi-agent workload: the events a team of agents would emit.

:func:`generate` is pure: no wall clock, no global random state. The same
:class:`SimulationConfig` yields the same events, byte for byte (same ids: UUIDv7s from
seeded generators at simulated times). :func:`publish` sends them with an
:class:`~streams.producer.EventProducer`, optionally paced and with a progress bar.

The workload
------------
``agents`` agents cycle through the roles planner, coder, tester, reviewer
(``planner-1, coder-1, tester-1, reviewer-1, planner-2, ...``). Each run has a goal and a
team (one agent per role, drawn from that role's pool; with fewer than four agents the
planner does the missing roles). Runs start staggered in simulated time and overlap.

Per run: the planner starts the run, thinks, publishes a plan (steps with dependencies:
implement -> test -> review) and messages each assignee. Every assignee starts the run and
works its task: thought -> decision -> action started -> action completed, then maybe a
lesson and feedback, and messages the planner back. Tools have realistic latencies
(``TOOLS``). Failures are retried (the retry's ``causes`` include the failed completion),
some completions are ``ok`` but their ``actual`` differs from the ``expected`` of the start
(expectation mismatches), a few actions are never completed (the run finishes with them
open) and a few completions arrive with no start (their cause is the id of a start that
was never emitted). Thoughts carry model, tokens, latency and cost (``MODELS``); texts are
200 B - 4 KB.

Ground truth for other components
---------------------------------
- ``subject`` of every ``agent.act.started``, ``agent.act.completed`` and
  ``agent.learn.lesson`` event is ``"scenario/<name>"``, a key of :data:`SCENARIOS`. Each
  scenario has several paraphrased situation texts (``Scenario.situations``): the lesson's
  ``situation`` and the action's ``arguments["situation"]`` are one of them, so the same
  scenario means semantically similar situation text (memory recall can be measured
  against it). ``Scenario.outcome`` is the characteristic outcome.
- Mismatches: ``action_completed.status == "ok"`` and ``actual != expected`` of its start.
  The simulator marks none of them in the payload; :func:`is_mismatch` recomputes it.
- Open actions: an ``action_started`` whose ``call_id`` never completes.
- Orphan completions: ``action_completed`` whose ``call_id`` starts with ``"orphan-"``;
  its only cause is an id that never appears in the stream.
- Causes always point to earlier events of the same run (except orphan completions).
  Each agent's events come out ordered by ``time``; the whole stream is ordered by time.
- ``max_events`` stops the stream after that many events (runs may end mid-way).
- Recall: from an agent's second run on, some decisions cite in ``recalled_episodes`` the
  episodes (ids from :func:`schemas.derived.episode_id_for`, as episodic memory stores
  them) of that agent's earlier runs with the same scenario that had ended before the
  decision; the chance is :func:`recall_chance` of the agent's earlier runs, so the recall
  rate rises over runs. It draws from its own random stream, so every other event is what
  it would be without it.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import random
import time as _time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from schemas.derived import episode_id_for
from schemas.envelope import ActionStartedEvent, Event
from schemas.ids import Uuid7Generator
from streams.emitter import EventFactory, epoch_ms

ROLES: tuple[str, ...] = ("planner", "coder", "tester", "reviewer")


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate. ``runs=None`` means "as many as ``max_events`` needs"."""

    agents: int = 4
    runs: int | None = 10
    seed: int = 0
    max_events: int | None = None
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def __post_init__(self) -> None:
        if self.agents < 1:
            raise ValueError("agents must be >= 1")
        if self.runs is not None and self.runs < 0:
            raise ValueError("runs must be >= 0")
        if self.runs is None and self.max_events is None:
            raise ValueError("runs=None needs max_events (otherwise the stream never ends)")
        if self.max_events is not None and self.max_events < 0:
            raise ValueError("max_events must be >= 0")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")


# --- catalogues ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    provider: str
    usd_per_m_input: float
    usd_per_m_output: float
    ms_per_output_token: float


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("o3", "openai", 2.0, 8.0, 22.0),
        Model("claude-sonnet-4", "anthropic", 3.0, 15.0, 14.0),
        Model("gpt-4o-mini", "openai", 0.15, 0.6, 6.0),
        Model("gpt-4o", "openai", 2.5, 10.0, 11.0),
    )
}
ROLE_MODEL = {
    "planner": "o3",
    "coder": "claude-sonnet-4",
    "tester": "gpt-4o-mini",
    "reviewer": "gpt-4o",
}


@dataclass(frozen=True, slots=True)
class Tool:
    """Latency is log-normal around ``median_ms`` with shape ``sigma``."""

    name: str
    median_ms: float
    sigma: float = 0.5


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool("read_file", 15, 0.6),
        Tool("write_file", 25, 0.5),
        Tool("search_code", 120, 0.7),
        Tool("run_tests", 45_000, 0.6),
        Tool("lint", 3_000, 0.4),
        Tool("git", 800, 0.7),
        Tool("shell", 2_000, 0.9),
        Tool("sql_query", 300, 1.0),
        Tool("http_request", 250, 0.8),
        Tool("deploy", 90_000, 0.4),
        Tool("web_search", 1_200, 0.5),
    )
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named situation an agent meets, with paraphrases and its characteristic outcome."""

    name: str
    roles: tuple[str, ...]
    tool: str
    arguments: dict[str, Any]
    expected: str
    situations: tuple[str, ...]
    outcome: str
    error_type: str | None
    insight: str
    failure_rate: float = 0.0
    mismatch_rate: float = 0.0
    mismatch_actual: str = ""

    @property
    def subject(self) -> str:
        return f"scenario/{self.name}"


_S = Scenario
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        _S(
            "flaky-test",
            ("tester", "coder"),
            "run_tests",
            {"path": "tests/test_checkout.py", "args": ["-x", "-q"]},
            "all tests pass",
            (
                "The checkout test suite fails intermittently: test_payment_timeout passes "
                "locally but fails about one run in five on CI with a timeout waiting for the "
                "mock payment gateway to respond.",
                "CI is red again on test_payment_timeout although nothing in the payment code "
                "changed; rerunning the same commit makes it green, so the failure looks "
                "nondeterministic and timing related.",
                "A test that waits on the fake payment gateway sometimes times out under load "
                "on the shared CI runners, while the same test is stable on a developer laptop.",
                "Intermittent failure in the checkout tests: the payment timeout test flakes "
                "when the CI machine is busy, and a plain rerun usually passes.",
            ),
            "error: test_payment_timeout timed out after 5.0s (passes on rerun)",
            "AssertionError",
            "Rerun the failing test in isolation first; if it passes, quarantine it and "
            "replace the fixed sleep with an explicit wait on the gateway's ready signal.",
            failure_rate=0.45,
            mismatch_rate=0.1,
            mismatch_actual="tests pass but took 4x longer than usual",
        ),
        _S(
            "missing-dependency",
            ("coder", "tester"),
            "run_tests",
            {"path": "tests/", "args": ["-q"]},
            "test collection succeeds",
            (
                "Importing the new module fails with ModuleNotFoundError for 'httpx' because "
                "the package was used in code but never declared in pyproject.toml.",
                "Test collection breaks right away: the service imports a library that is not "
                "installed in the fresh virtual environment used by CI.",
                "A fresh checkout cannot run the tests since one third-party package the code "
                "needs is missing from the declared dependencies.",
            ),
            "error: ModuleNotFoundError: No module named 'httpx'",
            "ModuleNotFoundError",
            "Declare every imported third-party package in pyproject.toml and reinstall the "
            "environment from scratch before running tests.",
            failure_rate=0.7,
        ),
        _S(
            "merge-conflict",
            ("coder",),
            "git",
            {"command": "rebase", "onto": "origin/main"},
            "rebase completes cleanly",
            (
                "Rebasing the feature branch onto main stops with conflicts in "
                "orders/service.py because another change renamed the same function.",
                "The branch cannot be merged: main moved on and both sides edited the order "
                "service module, so git reports conflicting hunks.",
                "Git refuses to finish the rebase; the same lines of the orders service were "
                "modified upstream while this branch was open.",
            ),
            "error: CONFLICT (content): merge conflict in orders/service.py",
            "GitConflict",
            "Rebase onto main early and often; resolve by keeping upstream's rename and "
            "re-applying the local change on top.",
            failure_rate=0.6,
        ),
        _S(
            "slow-query",
            ("coder", "tester"),
            "sql_query",
            {"query": "SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC"},
            "returns within 200 ms",
            (
                "The orders listing query takes several seconds because it scans the whole "
                "orders table; there is no index on customer_id.",
                "Fetching a customer's orders is very slow in staging: the planner chooses a "
                "sequential scan over millions of rows.",
                "A simple lookup of orders by customer times out under realistic data volume, "
                "the database does a full table scan every time.",
            ),
            "ok but slow: returned 40 rows in 8.4 s",
            None,
            "Check the query plan with EXPLAIN before shipping; add an index on "
            "(customer_id, created_at) for this access pattern.",
            failure_rate=0.15,
            mismatch_rate=0.6,
            mismatch_actual="returned 40 rows in 8.4 s",
        ),
        _S(
            "api-rate-limit",
            ("coder", "tester"),
            "http_request",
            {"method": "GET", "url": "https://api.example.com/v2/inventory"},
            "200 with the inventory list",
            (
                "Calls to the inventory API start failing with HTTP 429 Too Many Requests "
                "after a burst of parallel requests from the sync job.",
                "The upstream inventory service throttles us: the bulk refresh hits its rate "
                "limit and gets 429 responses with a Retry-After header.",
                "Requests to the partner API are rejected for exceeding the quota when the "
                "crawler fans out too many concurrent calls.",
            ),
            "error: HTTP 429 Too Many Requests (Retry-After: 30)",
            "HTTPError",
            "Respect Retry-After, add client-side rate limiting and exponential backoff, and "
            "batch requests instead of fanning out.",
            failure_rate=0.5,
        ),
        _S(
            "type-error",
            ("coder",),
            "run_tests",
            {"path": "tests/test_pricing.py", "args": ["-q"]},
            "all tests pass",
            (
                "The pricing tests crash with TypeError: unsupported operand type(s) for +: "
                "'Decimal' and 'float' after the discount change.",
                "Adding a float discount to a Decimal price raises a TypeError in the pricing "
                "module, so the whole test file errors out.",
                "Mixing float and Decimal arithmetic in the discount calculation breaks the "
                "pricing tests with an operand type error.",
            ),
            "error: TypeError: unsupported operand type(s) for +: 'Decimal' and 'float'",
            "TypeError",
            "Keep money as Decimal end to end; convert inputs at the boundary and add a type "
            "check to the pricing function.",
            failure_rate=0.55,
        ),
        _S(
            "missing-env-var",
            ("coder", "tester"),
            "deploy",
            {"service": "orders-api", "environment": "staging"},
            "deployment healthy",
            (
                "The staging deployment crashes on start because DATABASE_URL is not set in "
                "the new environment's configuration.",
                "Service pods restart in a loop: the application reads a required environment "
                "variable for the database connection that nobody configured in staging.",
                "Deploying to staging fails at boot with KeyError 'DATABASE_URL'; the secret "
                "exists in production but was never added to the staging settings.",
            ),
            "error: KeyError: 'DATABASE_URL' (CrashLoopBackOff)",
            "KeyError",
            "Validate required configuration at startup with a clear message and keep a "
            "checked-in list of variables every environment must define.",
            failure_rate=0.5,
        ),
        _S(
            "disk-full",
            ("tester", "coder"),
            "shell",
            {"command": "make build"},
            "build artifacts written",
            (
                "The build fails writing artifacts with 'No space left on device'; the runner's "
                "disk is filled by old Docker layers and caches.",
                "Compilation stops midway because the build machine ran out of disk space, "
                "mostly stale container images from previous jobs.",
                "Writing the wheel fails: the CI runner disk is at 100% after weeks of cached "
                "build outputs that were never cleaned.",
            ),
            "error: OSError: [Errno 28] No space left on device",
            "OSError",
            "Clean caches and dangling images before builds and alert when the runner disk "
            "passes 80%.",
            failure_rate=0.6,
        ),
        _S(
            "deprecated-endpoint",
            ("coder",),
            "http_request",
            {"method": "POST", "url": "https://api.example.com/v1/payments"},
            "201 payment created",
            (
                "Creating a payment returns 404 because the provider removed the v1 payments "
                "endpoint; the client still uses the old URL.",
                "The payment provider retired API version one and our integration keeps "
                "posting to the deprecated path, which now answers Not Found.",
                "Payment creation broke after the vendor's sunset date: the SDK we pinned "
                "targets an API version that no longer exists.",
            ),
            "error: HTTP 404 Not Found (v1 retired, use /v2/payments)",
            "HTTPError",
            "Track vendor deprecation notices and pin API versions explicitly; migrate to v2 "
            "with a contract test against the sandbox.",
            failure_rate=0.65,
        ),
        _S(
            "lint-failure",
            ("coder", "reviewer"),
            "lint",
            {"paths": ["src/"], "tool": "ruff"},
            "no lint errors",
            (
                "The linter reports unused imports and a line that is too long in the new "
                "module, so the pre-merge check fails.",
                "Style checks block the merge: ruff finds an unused variable and import "
                "ordering problems in files touched by the change.",
                "Code review automation rejects the patch because of lint errors the author "
                "did not run locally.",
            ),
            "error: 3 lint errors (F401, E501, I001)",
            "LintError",
            "Run the formatter and linter before committing; wire them into a pre-commit "
            "hook so the check never fails at review time.",
            failure_rate=0.4,
        ),
        _S(
            "schema-migration-lock",
            ("coder",),
            "shell",
            {"command": "alembic upgrade head"},
            "migration applied",
            (
                "The database migration hangs waiting for a lock on the orders table while a "
                "long-running report query holds it.",
                "Applying the schema change blocks forever: ALTER TABLE needs an exclusive lock "
                "that a reporting transaction is keeping.",
                "Migration to add a column stalls in production because an analytics query has "
                "the table locked for minutes.",
            ),
            "error: lock timeout after 60 s on relation orders",
            "LockTimeout",
            "Set a lock timeout on migrations, run them off-peak, and split ALTERs that need "
            "exclusive locks into online steps.",
            failure_rate=0.5,
        ),
        _S(
            "ambiguous-requirement",
            ("coder", "reviewer"),
            "web_search",
            {"query": "pagination cursor vs offset API design"},
            "a clear design choice",
            (
                "The task says 'add pagination' but does not say whether clients expect "
                "offset/limit or cursor based pages, and both appear in older endpoints.",
                "Requirements are unclear: the ticket asks for paging without specifying the "
                "style, page size limits or the sort order clients rely on.",
                "Nobody decided between cursor and offset pagination for the new listing "
                "endpoint, and existing APIs are inconsistent.",
            ),
            "ok: found conflicting conventions, asked the planner",
            None,
            "Ask the requester for the contract before coding; default to cursor pagination "
            "with a stable sort key.",
            failure_rate=0.0,
            mismatch_rate=0.5,
            mismatch_actual="found two conflicting conventions, no clear answer",
        ),
        _S(
            "hardcoded-secret",
            ("reviewer",),
            "search_code",
            {"query": "api_key =", "repo": "shop"},
            "no secrets in the diff",
            (
                "The patch under review contains what looks like a live API key assigned to a "
                "module-level constant in the payment client.",
                "Reviewing the change turns up a credential committed in plain text: the "
                "partner token is hard-coded instead of read from the secret store.",
                "A secret slipped into the diff: the HTTP client sets an Authorization header "
                "from a string literal that matches the production key format.",
            ),
            "error: found 1 hard-coded credential in payments/client.py",
            "SecretFound",
            "Block merges that add credentials; load secrets from the environment or the "
            "vault and rotate any key that was ever committed.",
            failure_rate=0.5,
        ),
        _S(
            "low-coverage",
            ("reviewer", "tester"),
            "run_tests",
            {"path": "tests/", "args": ["--cov=src", "-q"]},
            "coverage at least 80%",
            (
                "The new code paths have almost no tests: coverage of the orders module drops "
                "well below the team's threshold after the change.",
                "Review finds the feature merged without tests for its error branches, so the "
                "coverage report for the touched files is low.",
                "Coverage check on the pull request shows the added functions are mostly "
                "untested, especially the pagination edge cases.",
            ),
            "ok but coverage 62% on changed files",
            None,
            "Ask for tests of the error branches and edge cases before approving; enforce "
            "a coverage gate on changed lines.",
            failure_rate=0.1,
            mismatch_rate=0.6,
            mismatch_actual="coverage 62% on changed files",
        ),
        _S(
            "read-code",
            ROLES,
            "read_file",
            {"path": "src/orders/service.py"},
            "file contents",
            (
                "Before changing the order service, read the module to understand how orders "
                "are created and which functions call the repository.",
                "Need to look at the current implementation of the orders service to see "
                "where the new behaviour fits.",
                "Open the orders service source to find the function that builds the listing "
                "response before editing it.",
            ),
            "ok: read 412 lines",
            None,
            "Reading the call sites first avoids editing the wrong layer.",
            failure_rate=0.02,
        ),
        _S(
            "write-code",
            ("coder",),
            "write_file",
            {"path": "src/orders/service.py"},
            "file written",
            (
                "Implement the change in the orders service: add the new parameter, thread it "
                "through to the repository call and update the response model.",
                "Write the code for the feature in the order service module and keep the "
                "public function signatures backwards compatible.",
                "Edit the orders service to add the behaviour described in the plan, touching "
                "only the listing function and its helper.",
            ),
            "ok: wrote 38 changed lines",
            None,
            "Small focused edits are easier to review and to revert.",
            failure_rate=0.02,
        ),
        _S(
            "code-search",
            ROLES,
            "search_code",
            {"query": "def list_orders", "repo": "shop"},
            "matches found",
            (
                "Find every place that calls list_orders so the new argument is passed "
                "everywhere it is needed.",
                "Search the repository for usages of the listing function to estimate the "
                "blast radius of the change.",
                "Look up all callers of the order listing code before changing its signature.",
            ),
            "ok: 7 matches in 4 files",
            None,
            "Search for callers before changing a signature.",
            failure_rate=0.0,
            mismatch_rate=0.1,
            mismatch_actual="no matches (function was renamed)",
        ),
    )
}

_ROUTINE = ("read-code", "code-search", "write-code")

GOALS: tuple[str, ...] = (
    "Add cursor pagination to the /orders API",
    "Fix the flaky checkout tests on CI",
    "Migrate the payment integration to the v2 API",
    "Speed up the customer orders page",
    "Add a discount code feature to pricing",
    "Make the staging deployment healthy again",
    "Reduce CI build failures caused by the runners",
    "Add rate limiting to the inventory sync job",
    "Add an index and a migration for order lookups",
    "Clean up lint errors and enforce pre-commit hooks",
)

_REASONING: tuple[str, ...] = (
    "Let me break this down into smaller steps before touching any code.",
    "The safest approach is to reproduce the problem first and only then change anything.",
    "I should check whether the same issue happened before and what fixed it then.",
    "There are two plausible causes; the cheaper one to rule out is configuration.",
    "The change touches a public function, so callers and tests need to be updated together.",
    "Given the time budget, a focused fix with a regression test is better than a refactor.",
    "I will verify the assumption with a quick experiment instead of reasoning about it.",
    "The logs point to a timing issue rather than a logic error in the code itself.",
    "Before deciding, compare the expected output of the tool with what it actually returned.",
    "This is similar to an earlier failure; the lesson then was to look at the environment.",
    "A retry might hide the underlying problem, so I will record what I observed first.",
    "The reviewer will ask about edge cases: empty input, very large pages and unicode.",
    "Dependencies between the steps mean the tests cannot run until the code is written.",
    "I am fairly confident in this plan, but I will keep the alternative in mind.",
    "Cost matters here: a smaller model can handle the mechanical parts of the work.",
    "The error message is specific enough to act on without more investigation.",
    "If this fails again I will escalate to the planner instead of retrying blindly.",
    "Measuring before and after will tell us whether the optimisation was worth it.",
)

_STATUS = ("succeeded", "failed", "cancelled")


# --- helpers -------------------------------------------------------------------------------


def _sub_seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def agent_names(n: int) -> list[tuple[str, str]]:
    """(agent id, role) for ``n`` agents: planner-1, coder-1, tester-1, reviewer-1, ..."""
    return [(f"{ROLES[i % 4]}-{i // 4 + 1}", ROLES[i % 4]) for i in range(n)]


def is_mismatch(started: Event, completed: Event) -> bool:
    """True when a completion is ok but its actual outcome differs from the expected one."""
    s, c = started.data, completed.data
    return (
        getattr(c, "status", None) == "ok"
        and getattr(s, "expected", None) is not None
        and getattr(c, "actual", None) is not None
        and c.actual != s.expected  # type: ignore[union-attr]
    )


def scenario_of(event: Event) -> Scenario | None:
    """The ground-truth scenario of an action or lesson event, if any."""
    subject = event.subject or ""
    return (
        SCENARIOS.get(subject.removeprefix("scenario/"))
        if subject.startswith("scenario/")
        else None
    )


def recall_chance(earlier_runs: int) -> float:
    """How likely an agent recalls a similar past episode for a decision, after
    ``earlier_runs`` runs: 0 in its first run, rising (and levelling off below 0.85)."""
    return 0.85 * earlier_runs / (earlier_runs + 5)


RECALL_KEEP = 8
"""Past episodes kept per (agent, scenario): recall cites the most recent ones."""


@dataclass
class _Memory:
    """What the agents remember across runs: per (agent, scenario) their latest episodes as
    (completion ms, run index, episode id), and how many runs each agent took part in."""

    episodes: dict[tuple[str, str], deque[tuple[int, int, str]]] = field(default_factory=dict)
    runs_before: dict[str, int] = field(default_factory=dict)

    def remember(self, agent: str, scenario: str, at_ms: int, run: int, completion: str) -> None:
        kept = self.episodes.setdefault((agent, scenario), deque(maxlen=RECALL_KEEP))
        kept.append((at_ms, run, episode_id_for(completion)))

    def similar(self, agent: str, scenario: str, before_ms: int, run: int) -> list[str]:
        """Ids of the agent's episodes of this scenario from earlier runs, ended before
        ``before_ms``, newest first."""
        kept = self.episodes.get((agent, scenario), ())
        return [eid for at, r, eid in reversed(kept) if r < run and at < before_ms]


# --- one run -------------------------------------------------------------------------------


@dataclass
class _Run:
    """Generates one run's events in time order with its own seeded randomness and ids."""

    config: SimulationConfig
    index: int
    start_ms: int
    team: dict[str, str]  # role -> agent id
    memory: _Memory = field(default_factory=_Memory)
    rng: random.Random = field(init=False)
    recall_rng: random.Random = field(init=False)
    earlier_runs: dict[str, int] = field(init=False)
    ids: Uuid7Generator = field(init=False)
    now: int = field(init=False)
    run_id: str = field(init=False)
    factories: dict[str, EventFactory] = field(default_factory=dict)
    out: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(_sub_seed(self.config.seed, "run", self.index))
        self.recall_rng = random.Random(_sub_seed(self.config.seed, "recall", self.index))
        self.earlier_runs = {}
        for agent in dict.fromkeys(self.team.values()):
            self.earlier_runs[agent] = self.memory.runs_before.get(agent, 0)
            self.memory.runs_before[agent] = self.earlier_runs[agent] + 1
        self.ids = Uuid7Generator(_sub_seed(self.config.seed, "ids", self.index))
        self.now = self.start_ms
        self.run_id = f"run-{self.config.seed}-{self.index:06d}"

    # time and building

    def tick(self, ms: float) -> datetime:
        self.now += max(1, int(ms))
        return self.at()

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.now / 1000, UTC)

    def factory(self, agent: str) -> EventFactory:
        f = self.factories.get(agent)
        if f is None:
            f = EventFactory(
                agent, run_id=self.run_id, ids=self.ids, clock=self.at, source=f"/sim/{agent}"
            )
            self.factories[agent] = f
        return f

    def text(self, lead: str, lo: int = 200, hi: int = 4000) -> str:
        """Reasoning text of a log-uniform size in [lo, hi] bytes."""
        target = int(math.exp(self.rng.uniform(math.log(lo), math.log(hi))))
        parts = [lead]
        size = len(lead)
        while size < target:
            s = self.rng.choice(_REASONING)
            parts.append(s)
            size += len(s) + 1
        out = " ".join(parts)
        return out[: max(target, lo)] if len(out) > hi else out

    def thought(
        self, agent: str, role: str, lead: str, causes: tuple[str, ...], task: str | None
    ) -> Event:
        model = MODELS[ROLE_MODEL[role]]
        text = self.text(lead)
        out_tokens = max(1, len(text) // 4)
        in_tokens = self.rng.randint(400, 12_000)
        latency = 250 + out_tokens * model.ms_per_output_token * self.rng.uniform(0.7, 1.4)
        cost = (in_tokens * model.usd_per_m_input + out_tokens * model.usd_per_m_output) / 1e6
        t = self.tick(latency)
        return self.factory(agent).thought(
            text,
            model=model.name,
            provider=model.provider,
            input_tokens=in_tokens,
            output_tokens=out_tokens,
            latency_ms=round(latency, 1),
            cost_usd=round(cost, 6),
            causes=causes,
            time=t,
            task_id=task,
        )

    def latency(self, tool: str) -> float:
        t = TOOLS[tool]
        return t.median_ms * math.exp(self.rng.gauss(0, t.sigma))

    # the script

    def events(self) -> Iterator[Event]:
        self.script()
        yield from self.out

    def emit(self, event: Event) -> Event:
        self.out.append(event)
        return event

    def script(self) -> None:
        rng = self.rng
        planner = self.team["planner"]
        goal = GOALS[rng.randrange(len(GOALS))]
        pf = self.factory(planner)
        started = self.emit(pf.run_started(goal, causes=(), time=self.at()))
        th = self.emit(
            self.thought(
                planner,
                "planner",
                f"Goal: {goal}. Planning the work for the team.",
                (started.id,),
                None,
            )
        )
        steps = [
            {"id": "implement", "description": f"Implement: {goal}", "depends_on": []},
            {"id": "test", "description": "Test the change", "depends_on": ["implement"]},
            {
                "id": "review",
                "description": "Review the change",
                "depends_on": ["implement", "test"],
            },
        ]
        plan = self.emit(pf.plan(goal, steps, causes=(th.id,), time=self.tick(rng.uniform(20, 80))))
        joined: dict[str, Event] = {}
        results: list[bool] = []
        last_by_agent: dict[str, Event] = {planner: plan}
        for step, role in (("implement", "coder"), ("test", "tester"), ("review", "reviewer")):
            agent = self.team.get(role, planner)
            task = f"{self.run_id}/{step}"
            msg = self.emit(
                pf.message(
                    agent,
                    f"Please take step '{step}' of the plan for: {goal}. "
                    f"Report back when done, including anything unexpected.",
                    conversation_id=self.run_id,
                    causes=(plan.id,),
                    time=self.tick(rng.uniform(30, 200)),
                    task_id=task,
                )
            )
            af = self.factory(agent)
            if agent not in joined and agent != planner:
                joined[agent] = self.emit(af.run_started(goal, causes=(msg.id,), time=self.tick(5)))
            ok, last = self.work(agent, role, task, msg)
            results.append(ok)
            last_by_agent[agent] = last
            reply = self.emit(
                af.message(
                    planner,
                    f"Step '{step}' {'done' if ok else 'failed'}: {last.type.split('.')[-2]} "
                    f"{getattr(last.data, 'result', '') or ''}".strip(),
                    conversation_id=self.run_id,
                    causes=(last.id,),
                    time=self.tick(rng.uniform(30, 300)),
                    task_id=task,
                )
            )
            last_by_agent[agent] = reply
            if not ok and rng.random() < 0.5:
                break  # the planner stops the run after a failed step, sometimes
        status: Literal["succeeded", "failed", "cancelled"]
        if all(results) and len(results) == 3:
            status = "succeeded"
        elif rng.random() < 0.15:
            status = "cancelled"
        else:
            status = "failed"
        if rng.random() < 0.3:
            self.emit(
                pf.feedback(
                    round(
                        rng.uniform(0.6, 1.0) if status == "succeeded" else rng.uniform(0, 0.5), 3
                    ),
                    source="human",
                    comment=f"Run {status}: {goal}",
                    causes=(last_by_agent[planner].id,),
                    time=self.tick(rng.uniform(1000, 60_000)),
                )
            )
        for agent in [a for a in joined if a != planner]:
            self.emit(
                self.factory(agent).run_finished(
                    status,
                    f"{agent} finished its part",
                    causes=(last_by_agent[agent].id,),
                    time=self.tick(5),
                )
            )
        self.emit(
            pf.run_finished(
                status,
                f"{sum(results)}/{len(results)} steps succeeded for: {goal}",
                causes=tuple(e.id for e in (last_by_agent[planner],)),
                time=self.tick(10),
            )
        )

    def pick_scenario(self, role: str, first: bool) -> Scenario:
        if first and self.rng.random() < 0.6:
            return SCENARIOS[self.rng.choice(_ROUTINE)]
        fitting = [s for s in SCENARIOS.values() if role in s.roles and s.name not in _ROUTINE]
        return self.rng.choice(fitting or list(SCENARIOS.values()))

    def work(self, agent: str, role: str, task: str, msg: Event) -> tuple[bool, Event]:
        """One agent's task: 1-3 actions, each possibly failing and retried. (ok, last event)."""
        rng = self.rng
        af = self.factory(agent)
        last: Event = msg
        ok_all = True
        for i in range(rng.randint(1, 3)):
            sc = self.pick_scenario(role, first=i == 0)
            ok, last = self.attempt_chain(agent, role, task, sc, last)
            ok_all = ok_all and ok
            if not ok:
                break
        if rng.random() < 0.7:
            source: Literal["test", "critic", "environment"] = (
                "test" if role == "tester" else "critic" if role == "reviewer" else "environment"
            )
            last = self.emit(
                af.feedback(
                    round(rng.uniform(0.6, 1.0) if ok_all else rng.uniform(0.0, 0.5), 3),
                    source=source,
                    comment=f"{task}: {'looks good' if ok_all else 'needs another pass'}",
                    causes=(last.id,),
                    time=self.tick(rng.uniform(10, 500)),
                    task_id=task,
                )
            )
        return ok_all, last

    def attempt_chain(
        self, agent: str, role: str, task: str, sc: Scenario, cause: Event
    ) -> tuple[bool, Event]:
        rng = self.rng
        af = self.factory(agent)
        situation = rng.choice(sc.situations)
        failed: Event | None = None
        for attempt in range(3):
            lead = (
                situation
                if failed is None
                else (
                    f"The previous attempt failed: {failed.data.result}. {situation}"  # type: ignore[union-attr]
                )
            )
            causes = (cause.id,) if failed is None else (failed.id,)
            th = self.emit(self.thought(agent, role, lead, causes, task))
            alternatives = (
                ["ask the planner", "skip this step"] if failed is None else ["give up", "escalate"]
            )
            confidence = round(rng.uniform(0.5, 0.98), 2)
            decided_at = self.tick(rng.uniform(20, 120))
            d = self.emit(
                af.decision(
                    f"use {sc.tool}" if failed is None else f"retry {sc.tool}",
                    alternatives=alternatives,
                    confidence=confidence,
                    rationale=sc.insight if failed is not None else None,
                    recalled_episodes=self.recall(agent, sc),
                    causes=(th.id,),
                    time=decided_at,
                    task_id=task,
                )
            )
            start_causes = (d.id,) if failed is None else (d.id, failed.id)
            if rng.random() < 0.01:
                # a completion whose start never reached the log
                phantom = self.ids.new(self.now)
                return True, self.emit(
                    af.action_completed(
                        None,
                        call_id=f"orphan-{phantom}",
                        tool=sc.tool,
                        status="ok",
                        result=sc.outcome if sc.error_type is None else "ok",
                        actual=sc.expected,
                        duration_ms=round(self.latency(sc.tool), 1),
                        causes=(phantom,),
                        subject=sc.subject,
                        time=self.tick(self.latency(sc.tool)),
                        task_id=task,
                    )
                )
            started = self.emit(
                af.action_started(
                    sc.tool,
                    {**sc.arguments, "situation": situation, "attempt": attempt + 1},
                    expected=sc.expected,
                    causes=start_causes,
                    subject=sc.subject,
                    time=self.tick(rng.uniform(5, 50)),
                    task_id=task,
                )
            )
            assert isinstance(started, ActionStartedEvent)
            if rng.random() < 0.03:
                return True, started  # never completed: the run finishes with it open
            fail_p = sc.failure_rate * (0.5**attempt)
            t = self.tick(self.latency(sc.tool))
            if rng.random() < fail_p:
                completed = self.remember(
                    agent,
                    sc,
                    self.emit(
                        af.action_completed(
                            started,
                            status="error",
                            result=sc.outcome,
                            actual=sc.outcome,
                            error_type=sc.error_type or "ToolError",
                            subject=sc.subject,
                            time=t,
                            task_id=task,
                        )
                    ),
                )
                self.lesson(agent, task, sc, situation, completed, failed=True)
                failed = completed
                continue
            mismatch = rng.random() < sc.mismatch_rate
            actual = sc.mismatch_actual if mismatch else sc.expected
            completed = self.remember(
                agent,
                sc,
                self.emit(
                    af.action_completed(
                        started,
                        status="ok",
                        result=(sc.outcome if sc.error_type is None else f"ok: {sc.expected}")[
                            :200
                        ],
                        actual=actual,
                        subject=sc.subject,
                        time=t,
                        task_id=task,
                    )
                ),
            )
            if mismatch or failed is not None or rng.random() < 0.15:
                return True, self.lesson(
                    agent, task, sc, situation, completed, failed=False, mismatch=mismatch
                )
            return True, completed
        assert failed is not None
        return False, failed

    def recall(self, agent: str, sc: Scenario) -> list[str]:
        """The episodes this decision cites: none in the agent's first run; later, with
        :func:`recall_chance`, one to three of its latest of the same scenario."""
        chance = recall_chance(self.earlier_runs.get(agent, 0))
        if chance <= 0 or self.recall_rng.random() >= chance:
            return []
        similar = self.memory.similar(agent, sc.name, self.now, self.index)
        return similar[: self.recall_rng.randint(1, 3)]

    def remember(self, agent: str, sc: Scenario, completed: Event) -> Event:
        """A completion of a started action closes an episode the agent can recall later."""
        self.memory.remember(agent, sc.name, self.now, self.index, completed.id)
        return completed

    def lesson(
        self,
        agent: str,
        task: str,
        sc: Scenario,
        situation: str,
        completed: Event,
        *,
        failed: bool,
        mismatch: bool = False,
    ) -> Event:
        outcome = (
            sc.outcome
            if failed
            else f"expected {sc.expected!r} but got {completed.data.actual!r}"  # type: ignore[union-attr]
            if mismatch
            else f"succeeded: {sc.expected}"
        )
        return self.emit(
            self.factory(agent).lesson(
                situation=situation,
                action=f"{sc.tool} {sc.arguments}",
                outcome=outcome,
                insight=sc.insight,
                causes=(completed.id,),
                subject=sc.subject,
                time=self.tick(self.rng.uniform(200, 2000)),
                task_id=task,
            )
        )


# --- the whole workload --------------------------------------------------------------------


def _team(rng: random.Random, agents: list[tuple[str, str]]) -> dict[str, str]:
    team: dict[str, str] = {}
    for role in ROLES:
        pool = [a for a, r in agents if r == role]
        if pool:
            team[role] = rng.choice(pool)
    return team


def generate(config: SimulationConfig) -> Iterator[Event]:
    """All events of the workload, ordered by time. Pure and deterministic."""
    if config.max_events == 0:
        return
    agents = agent_names(config.agents)
    schedule = random.Random(_sub_seed(config.seed, "schedule"))
    start_ms = epoch_ms(config.start)
    life_ids = Uuid7Generator(_sub_seed(config.seed, "lifecycle"))
    emitted = 0

    def limit_reached() -> bool:
        return config.max_events is not None and emitted >= config.max_events

    # lifecycle: every agent starts at the beginning
    for agent, role in agents:
        f = EventFactory(agent, ids=life_ids, source=f"/sim/{agent}")
        yield f.agent_started(
            agent, role=role, model=ROLE_MODEL[role], time=config.start, causes=()
        )
        emitted += 1
        if limit_reached():
            return

    heap: list[tuple[int, int, int, Event, Iterator[Event]]] = []
    memory = _Memory()
    next_run = 0
    next_start = start_ms + 1000
    last_ms = start_ms

    def admit() -> None:
        nonlocal next_run, next_start
        run = _Run(config, next_run, next_start, _team(schedule, agents), memory)
        gen = run.events()
        first = next(gen, None)
        if first is not None:
            heapq.heappush(heap, (epoch_ms(first.time), next_run, 0, first, gen))
        next_run += 1
        # runs overlap: the next one starts 20 s - 3 min later
        next_start += int(schedule.uniform(20_000, 180_000))

    seq = 0
    while True:
        while (config.runs is None or next_run < config.runs) and (
            not heap or next_start <= heap[0][0]
        ):
            admit()
        if not heap:
            break
        t, run_index, _, event, gen = heapq.heappop(heap)
        yield event
        emitted += 1
        last_ms = max(last_ms, t)
        if limit_reached():
            return
        nxt = next(gen, None)
        if nxt is not None:
            seq += 1
            heapq.heappush(heap, (epoch_ms(nxt.time), run_index, seq, nxt, gen))

    stop_at = datetime.fromtimestamp((last_ms + 1000) / 1000, UTC)
    for agent, _role in agents:
        f = EventFactory(agent, ids=life_ids, source=f"/sim/{agent}")
        yield f.agent_stopped("simulation finished", time=stop_at, causes=())
        emitted += 1
        if limit_reached():
            return


# --- publishing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishResult:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


async def publish(
    events: Iterable[Event],
    producer: Any,
    *,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
) -> PublishResult:
    """Send ``events`` through an started EventProducer, paced at ``rate`` events/s if given.

    Returns after ``flush()``: every counted event was acknowledged by the broker.
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    t0 = _time.monotonic()
    n = 0
    for event in events:
        if rate is not None:
            due = t0 + n / rate
            delay = due - _time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await producer.send(event)
        n += 1
        if on_progress is not None and n % progress_every == 0:
            on_progress(n)
    await producer.flush()
    if on_progress is not None:
        on_progress(n)
    return PublishResult(n, _time.monotonic() - t0)
