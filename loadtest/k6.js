// k6 load test for users who have k6: `k6 run loadtest/k6.js`
// (BASE_URL defaults to the demo: run `ficus demo` first, or point it at your own ficus).
// Checks status and the request id ficus returns; fails the run on errors or a slow p99.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';

export const options = {
  scenarios: {
    steady: { executor: 'constant-vus', vus: Number(__ENV.VUS || 32), duration: __ENV.DURATION || '30s' },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
  },
};

const paths = ['/api/customers/42', '/api/orders/7'];

export default function () {
  const res = http.get(`${BASE}${paths[__ITER % paths.length]}`);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'request id returned': (r) => (r.headers['X-Request-Id'] || '').length > 0,
  });
}
