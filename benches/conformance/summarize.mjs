// Summarises the conformance suite's result files for benches/cache-conformance.sh.
//
// usage: node summarize.mjs SUITE_DIR RESULTS_DIR TARGET...
//
// Reads RESULTS_DIR/TARGET.json (the suite CLI's output: test id -> true, or
// [error name, message]) for each target, and the suite's own test
// definitions from SUITE_DIR/tests to learn each test's kind and dependencies.
// Prints a table to stdout and writes RESULTS_DIR/summary.json.
//
// How a result is classed (the same reading cache-tests.fyi gives its
// results, written here from the test definitions' documented fields):
// - kind: "required" when a test says so or says nothing; "optimal" tests are
//   optional (a miss is a warning), "check" tests only record a behaviour.
// - a test that depends_on another test counts only when every dependency
//   passed (recursively); otherwise it is a "dependency" failure: e.g. "does
//   not reuse a no-store response" means nothing from a proxy that never
//   reuses anything.
// - ["Setup", ...]: the test could not set up its situation (for example an
//   earlier response it needs was not cached); ["Assertion", ...]: the
//   behaviour under test was wrong; any other error (e.g. a FetchError on a
//   broken response) is an "error". All of them are failures.
// - tests the CLI never runs (browser_only) are left out of every count.

import fs from 'node:fs'
import path from 'node:path'
import { pathToFileURL } from 'node:url'

const [suiteDir, resultsDir, ...targets] = process.argv.slice(2)
if (!suiteDir || !resultsDir || targets.length === 0) {
  console.error('usage: node summarize.mjs SUITE_DIR RESULTS_DIR TARGET...')
  process.exit(2)
}

const load = rel => import(pathToFileURL(path.join(suiteDir, rel)).href).then(m => m.default)
// The npm release ships Surrogate-Control's tests beside the index; newer
// sources have none.
const extra = fs.existsSync(path.join(suiteDir, 'tests/surrogate-control.mjs'))
  ? [await load('tests/surrogate-control.mjs')]
  : []
const suites = [...await load('tests/index.mjs'), ...extra]

const tests = new Map() // id -> { kind, dependsOn, suite, name }
for (const suite of suites) {
  for (const t of suite.tests) {
    if (t.browser_only === true) continue
    tests.set(t.id, {
      kind: t.kind || 'required',
      dependsOn: t.depends_on || [],
      suite: suite.id,
      name: t.name
    })
  }
}

function classify (results, id, seen = new Set()) {
  const r = results[id]
  if (r === undefined) return 'not_run'
  const t = tests.get(id)
  if (t && !seen.has(id)) {
    seen.add(id)
    for (const dep of t.dependsOn) {
      if (classify(results, dep, seen) !== 'pass') return 'dependency'
    }
  }
  if (r === true) return 'pass'
  const errName = Array.isArray(r) ? r[0] : undefined
  if (errName === 'Setup') return 'setup'
  if (errName === 'Assertion') return 'fail'
  return 'error'
}

const FAIL_CLASSES = ['fail', 'error', 'setup', 'dependency', 'not_run']
const summary = { suite: {}, targets: {} }
const perTarget = {}
for (const target of targets) {
  const file = path.join(resultsDir, `${target}.json`)
  let results
  try {
    results = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (err) {
    perTarget[target] = null
    summary.targets[target] = { error: `no usable results in ${file}: ${err.message}` }
    continue
  }
  const classes = {}
  const counts = {}
  for (const [id, t] of tests) {
    const c = classify(results, id)
    classes[id] = c
    counts[t.kind] ??= { total: 0, pass: 0, fail: 0, error: 0, setup: 0, dependency: 0, not_run: 0 }
    counts[t.kind].total++
    counts[t.kind][c]++
  }
  const all = { total: tests.size, pass: Object.values(classes).filter(c => c === 'pass').length }
  const requiredFailed = [...tests].filter(([id, t]) => t.kind === 'required' && classes[id] !== 'pass')
    .map(([id]) => ({ id, class: classes[id], detail: Array.isArray(results[id]) ? results[id][1] : null }))
  perTarget[target] = { classes, results }
  summary.targets[target] = { counts, all, required_failed: requiredFailed }
}

const kinds = {}
for (const t of tests.values()) kinds[t.kind] = (kinds[t.kind] || 0) + 1
summary.suite = { tests_run_by_cli: tests.size, by_kind: kinds }

// ---- table ----
const pad = (s, n) => String(s).padEnd(n)
const lpad = (s, n) => String(s).padStart(n)
const rows = [['target', 'required passed', 'failed', 'untestable', 'fail/error/setup', 'passed ignoring deps',
  'optimal passed', 'check yes', 'all passed']]
for (const target of targets) {
  const s = summary.targets[target]
  if (s.error) {
    rows.push([target, 'no results', '', '', '', '', '', '', ''])
    continue
  }
  const q = s.counts.required
  const o = s.counts.optimal || { pass: 0, total: 0 }
  const c = s.counts.check || { pass: 0, total: 0 }
  const raw = [...tests].filter(([id, t]) => t.kind === 'required' && perTarget[target].results[id] === true).length
  s.required_passed_ignoring_dependencies = raw
  rows.push([
    target,
    `${q.pass}/${q.total}`,
    `${q.fail + q.error + q.setup + q.not_run}`,
    `${q.dependency}`,
    `${q.fail}/${q.error}/${q.setup}`,
    `${raw}/${q.total}`,
    `${o.pass}/${o.total}`,
    `${c.pass}/${c.total}`,
    `${s.all.pass}/${s.all.total}`
  ])
}
const widths = rows[0].map((_, i) => Math.max(...rows.map(r => String(r[i]).length)))
console.log(`Required tests: ${kinds.required} (suite tests run by the CLI: ${tests.size}; optimal ${kinds.optimal || 0}, check ${kinds.check || 0})`)
console.log('')
rows.forEach((r, n) => {
  console.log(r.map((cell, i) => (i === 0 ? pad(cell, widths[i]) : lpad(cell, widths[i]))).join('  '))
  if (n === 0) console.log(widths.map(w => '-'.repeat(w)).join('  '))
})
console.log('')
console.log('required passed = the test passed and so did every test it depends on (as cache-tests.fyi counts);')
console.log('failed = fail (wrong behaviour) + error (broken response) + setup (the situation under test could')
console.log('not be set up, e.g. nothing was cached) + not run; untestable = a test it depends on did not pass')
console.log('(most often the check "freshness-none": a cache that stores responses without any freshness')
console.log('information makes the tests built on it meaningless). "passed ignoring deps" counts raw passes.')
console.log('"all passed" counts every kind, optimal and check tests included.')

// ---- required tests on which the targets differ ----
const present = targets.filter(t => perTarget[t])
if (process.env.DETAILS !== '0' && present.length > 1) {
  const differing = [...tests].filter(([id, t]) => t.kind === 'required' &&
    new Set(present.map(tg => perTarget[tg].classes[id] === 'pass')).size > 1)
  if (differing.length) {
    console.log('')
    console.log(`Required tests whose outcome differs between targets (${differing.length}; + pass, - otherwise, with the class):`)
    const w = Math.max(...differing.map(([id]) => id.length))
    console.log(`${pad('', w)}  ${present.map(tg => pad(tg, 12)).join(' ')}`)
    for (const [id] of differing) {
      const marks = present.map(tg => {
        const c = perTarget[tg].classes[id]
        return pad(c === 'pass' ? '+' : `- ${c}`, 12)
      })
      console.log(`${pad(id, w)}  ${marks.join(' ')}`)
    }
  }
}

fs.writeFileSync(path.join(resultsDir, 'summary.json'), JSON.stringify(summary, null, 2) + '\n')
