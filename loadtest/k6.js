// k6 load test with service-level objectives: `k6 run loadtest/k6.js` (k6 exits non-zero, 99,
// when a threshold below is missed, so CI or a release gate can run it as is).
//
// By default it drives the demo (`ficus demo`, then run this). Arrival-rate scenarios: requests
// start at the configured rate whatever the latency, so a slow ficus shows as latency and
// dropped iterations instead of quietly lowering the load (closed-model VUs would wait).
//
//   legacy     constant rate on a route only the legacy backend serves
//   modern     constant rate on the migration route as the beta-tester cohort (always modern)
//   migration  ramping rate on the same route for many users, split 50/50 by sticky hashing
//
// Every request is tagged with `route` (ficus's route name) and, when the request decides it,
// `side`; the `migration` requests learn their side from the answer (the demo backends say
// `X-Served-By`), so their latency is also recorded per served side in `ficus_served_duration`.
//
// Environment (all optional):
//   BASE_URL=http://127.0.0.1:8080   ficus's public listener
//   DURATION=30s                      length of the constant scenarios (the ramp takes the same)
//   LEGACY_RATE=50  MODERN_RATE=50    requests per second of the constant scenarios
//   PEAK_RATE=200                     the migration scenario's peak, requests per second
//   P95_MS=100  P99_MS=250            latency objectives for every tag
//   MAX_VUS=200                       VUs each scenario may use to hold its rate
//   LEGACY_PATH=/api/legacy/ping      a path the legacy catch-all route serves
//   ORDERS_PATH=/api/orders/7         a path the migration route serves
//
// Against your own ficus: set BASE_URL and the two paths, and the route names in ROUTES below.
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

const env = (name, dflt) => (__ENV[name] !== undefined && __ENV[name] !== '' ? __ENV[name] : dflt);
const BASE = env('BASE_URL', 'http://127.0.0.1:8080');
const DURATION = env('DURATION', '30s');
const P95 = Number(env('P95_MS', 100));
const P99 = Number(env('P99_MS', 250));
const MAX_VUS = Number(env('MAX_VUS', 200));
const LEGACY_PATH = env('LEGACY_PATH', '/api/legacy/ping');
const ORDERS_PATH = env('ORDERS_PATH', '/api/orders/7');

// ficus's route names for the two paths (config/demo.yaml).
export const ROUTES = { legacy: 'legacy-catch-all', orders: 'orders' };

const served = new Trend('ficus_served_duration', true);

const latency = [`p(95)<${P95}`, `p(99)<${P99}`];

export const options = {
  scenarios: {
    legacy: {
      executor: 'constant-arrival-rate',
      exec: 'legacy',
      rate: Number(env('LEGACY_RATE', 50)),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 10,
      maxVUs: MAX_VUS,
    },
    modern: {
      executor: 'constant-arrival-rate',
      exec: 'modern',
      rate: Number(env('MODERN_RATE', 50)),
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 10,
      maxVUs: MAX_VUS,
    },
    migration: {
      executor: 'ramping-arrival-rate',
      exec: 'migration',
      startRate: 10,
      timeUnit: '1s',
      preAllocatedVUs: 20,
      maxVUs: MAX_VUS,
      stages: [
        { target: Number(env('PEAK_RATE', 200)), duration: DURATION },
        { target: Number(env('PEAK_RATE', 200)), duration: DURATION },
        { target: 0, duration: '5s' },
      ],
    },
  },
  thresholds: {
    // Any error answer (4xx/5xx) or transport failure counts: at most 1%.
    http_req_failed: ['rate<0.01'],
    // Status and body checks below: at least 99% pass.
    checks: ['rate>0.99'],
    [`http_req_duration{route:${ROUTES.legacy}}`]: latency,
    [`http_req_duration{route:${ROUTES.orders}}`]: latency,
    'http_req_duration{side:legacy}': latency,
    'http_req_duration{side:modern}': latency,
    // The migration route per side that actually served (from the answer).
    'ficus_served_duration{side:legacy}': latency,
    'ficus_served_duration{side:modern}': latency,
  },
};

function get(path, headers, tags) {
  return http.get(`${BASE}${path}`, { headers, tags });
}

const okChecks = {
  'status is 200': (r) => r.status === 200,
  'request id returned': (r) => (r.headers['X-Request-Id'] || '').length > 0,
};

export function legacy() {
  const res = get(LEGACY_PATH, {}, { route: ROUTES.legacy, side: 'legacy' });
  check(res, okChecks, { route: ROUTES.legacy, side: 'legacy' });
}

export function modern() {
  const tags = { route: ROUTES.orders, side: 'modern' };
  const res = get(ORDERS_PATH, { 'X-User': 'beta-tester' }, tags);
  check(res, { ...okChecks, 'served by modern': (r) => r.headers['X-Served-By'] === 'modern' }, tags);
}

export function migration() {
  // Many users, each sticky to one side; the side is only known from the answer.
  const user = `user-${Math.floor(Math.random() * 10000)}`;
  const res = get(ORDERS_PATH, { 'X-User': user }, { route: ROUTES.orders });
  const side = res.headers['X-Served-By'] || 'unknown';
  served.add(res.timings.duration, { route: ROUTES.orders, side });
  check(res, { ...okChecks, 'one JSON shape from either side': (r) => r.status === 200 && /"id"/.test(r.body || '') }, {
    route: ROUTES.orders,
    side,
  });
}
