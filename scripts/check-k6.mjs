// CI check of loadtest/k6.js without k6 (not installable here): the script is loaded under node
// with stand-ins for the `k6`, `k6/http` and `k6/metrics` modules, then its options are checked
// for what the README promises (arrival-rate scenarios, thresholds that make k6 exit non-zero)
// and each scenario function runs once against a fake answer, proving its requests carry the
// `route` and `side` tags the thresholds filter on. Usage: node scripts/check-k6.mjs [file]
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const file = resolve(process.argv[2] || 'loadtest/k6.js');
const problems = [];
const fail = (m) => problems.push(m);

// The stand-ins record what the script asks of k6.
const requests = [];
const trends = {};
const checks = [];
globalThis.__k6stub = {
  http: {
    get(url, params = {}) {
      requests.push({ url, params });
      const user = (params.headers || {})['X-User'] || '';
      const side = user === 'beta-tester' || user.endsWith('1') ? 'modern' : 'legacy';
      return {
        status: 200,
        body: '{"id":"7"}',
        headers: { 'X-Request-Id': 'r-1', 'X-Served-By': side },
        timings: { duration: 1.5 },
      };
    },
  },
  check(res, sets, tags) {
    for (const [name, f] of Object.entries(sets)) checks.push({ name, ok: !!f(res), tags });
    return true;
  },
  Trend: class {
    constructor(name, isTime) {
      this.name = name;
      this.isTime = isTime;
      trends[name] = [];
    }
    add(v, tags) {
      trends[this.name].push({ v, tags });
    }
  },
};

const source = readFileSync(file, 'utf8');
const imports = {
  'k6/http': (spec) => `const ${spec.trim()} = globalThis.__k6stub.http;`,
  k6: (spec) => `const ${spec.trim()} = globalThis.__k6stub;`,
  'k6/metrics': (spec) => `const ${spec.trim()} = globalThis.__k6stub;`,
};
let rewritten = source.replace(/^import\s+(.+?)\s+from\s+'([^']+)';$/gm, (line, spec, mod) => {
  if (!imports[mod]) {
    fail(`imports an unknown module ${mod}`);
    return line;
  }
  return imports[mod](spec);
});
if (/^import\s/m.test(rewritten)) fail('an import this check cannot stand in for');
rewritten = `const __ENV = process.env.K6_CHECK_ENV ? JSON.parse(process.env.K6_CHECK_ENV) : {};\n${rewritten}`;

const dir = mkdtempSync(join(tmpdir(), 'k6-check-'));
let mod;
try {
  const copy = join(dir, 'k6.mjs');
  writeFileSync(copy, rewritten);
  mod = await import(pathToFileURL(copy).href);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const { options } = mod;
if (!options || typeof options !== 'object') fail('no exported options');
const scenarios = Object.entries(options.scenarios || {});
if (!scenarios.length) fail('no scenarios');
const arrival = new Set(['constant-arrival-rate', 'ramping-arrival-rate']);
const seen = new Set();
for (const [name, s] of scenarios) {
  if (!arrival.has(s.executor)) fail(`scenario ${name}: executor ${s.executor} is not an arrival-rate one`);
  seen.add(s.executor);
  if (typeof mod[s.exec || 'default'] !== 'function') fail(`scenario ${name}: exec ${s.exec} is no exported function`);
  if (!(s.maxVUs >= s.preAllocatedVUs && s.preAllocatedVUs > 0)) fail(`scenario ${name}: VUs`);
  if (s.executor === 'constant-arrival-rate' && !(s.rate > 0 && s.duration)) fail(`scenario ${name}: rate and duration`);
  if (s.executor === 'ramping-arrival-rate' && !(Array.isArray(s.stages) && s.stages.length)) fail(`scenario ${name}: stages`);
}
for (const e of arrival) if (!seen.has(e)) fail(`no ${e} scenario`);

// Threshold expressions as k6 parses them: aggregation, operator, number.
const expr = /^(p\(\d+(\.\d+)?\)|avg|min|max|med|rate|count|value)\s*(<|<=|>|>=|===|==|!=)\s*\d+(\.\d+)?$/;
const th = options.thresholds || {};
for (const [metric, list] of Object.entries(th)) {
  if (!/^[a-z_]+(\{[a-z_]+:[A-Za-z0-9_.-]+\})?$/.test(metric)) fail(`threshold metric ${metric}`);
  for (const t of list) if (!expr.test(typeof t === 'string' ? t : t.threshold)) fail(`${metric}: cannot parse ${JSON.stringify(t)}`);
}
const need = (metric, what) => {
  const list = (th[metric] || []).map((t) => (typeof t === 'string' ? t : t.threshold));
  if (!list.some((t) => t.startsWith(what))) fail(`no ${what} threshold on ${metric}`);
};
need('http_req_failed', 'rate<');
need('checks', 'rate>');
for (const tag of ['side:legacy', 'side:modern', `route:${mod.ROUTES.legacy}`, `route:${mod.ROUTES.orders}`]) {
  need(`http_req_duration{${tag}}`, 'p(95)<');
  need(`http_req_duration{${tag}}`, 'p(99)<');
}

// One iteration of each scenario.
for (const [name, s] of scenarios) {
  const before = requests.length;
  mod[s.exec || 'default']();
  const made = requests.slice(before);
  if (!made.length) fail(`scenario ${name}: no request`);
  for (const r of made) {
    if (!r.url.startsWith('http://127.0.0.1:8080/')) fail(`scenario ${name}: ${r.url} is not the demo by default`);
    if (!(r.params.tags || {}).route) fail(`scenario ${name}: a request without a route tag`);
  }
}
const sideTagged = requests.filter((r) => (r.params.tags || {}).side);
if (!sideTagged.some((r) => r.params.tags.side === 'legacy') || !sideTagged.some((r) => r.params.tags.side === 'modern'))
  fail('requests are not tagged with both sides');
const servedSides = new Set((trends.ficus_served_duration || []).map((x) => x.tags.side));
if (!servedSides.size) fail('the migration scenario records no per-side latency from the answer');
if (!checks.length || checks.some((c) => !c.ok)) fail(`checks against a good answer: ${JSON.stringify(checks.filter((c) => !c.ok))}`);

if (problems.length) {
  for (const p of problems) console.error(`FAIL ${file}: ${p}`);
  process.exit(1);
}
console.log(`${file}: ${scenarios.length} scenarios, ${Object.keys(th).length} thresholds: ok`);
