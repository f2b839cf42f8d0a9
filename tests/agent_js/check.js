'use strict';
// A host app in another language: a Node.js client of the Confide device agent, built at run
// time from client/proto/device.proto alone (plus the standard health proto). It plays the calls
// an app makes, including the mistakes the issue found, and prints every reply and status code
// as one JSON object for tests/client/test_agent_js.py to check.
//
//   node tests/agent_js/check.js unix:/path/agent.sock client/proto/device.proto [damaged]
//
// "damaged": the store's SQLite structure was damaged under the agent; what does the app see?

const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [address, deviceProto, mode] = process.argv.slice(2);
const options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const load = (file) => grpc.loadPackageDefinition(loader.loadSync(file, options));
const device = load(deviceProto).confide.device.v1;
const health = load(path.join(__dirname, 'health.proto')).grpc.health.v1;
const credentials = grpc.credentials.createInsecure();
const agent = new device.DeviceAgent(address, credentials);
const checks = new health.Health(address, credentials);

function call(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 60000 }, (err, reply) => {
      resolve(err ? { code: grpc.status[err.code], details: err.details } : { code: 'OK', reply });
    });
  });
}

async function main() {
  const out = {};
  out.health = await call(checks, 'Check', { service: 'confide.device.v1.DeviceAgent' });
  out.status = await call(agent, 'GetStatus', {});
  out.huge_item = await call(agent, 'Record', { item: '9223372036854775807' });
  out.milliseconds = await call(agent, 'Record', { item: 3, timestamp: Date.now() });
  out.records = [];
  for (const item of [3, 5, 8]) {
    out.records.push(await call(agent, 'Record', { item, rating: 4, timestamp: Date.now() / 1000 }));
  }
  out.listed = await call(agent, 'ListInteractions', {});
  const first = out.records[0].reply.record_id;
  out.deleted = await call(agent, 'DeleteInteraction', { record_id: first });
  out.deleted_again = await call(agent, 'DeleteInteraction', { record_id: first });
  out.forget_old_field = await call(agent, 'Forget', { confirm: 'no' }); // the field once a bool
  out.forget_typo = await call(agent, 'Forget', { device_id: 'no' });
  out.budget = await call(agent, 'GetPrivacyBudget', {});
  out.verify = await call(agent, 'Verify', {});
  out.recommend = await call(agent, 'Recommend', { k: 3 });
  const top = out.recommend.reply ? out.recommend.reply.items[0].item : 0;
  out.explain = await call(agent, 'Explain', { item: top, k: 5 });
  out.explain_no_item = await call(agent, 'Explain', { k: 5 });
  out.forget = await call(agent, 'Forget', { device_id: out.status.reply.device_id });
  out.after = await call(agent, 'GetStatus', {});
  process.stdout.write(JSON.stringify(out) + '\n');
  agent.close();
  checks.close();
}

async function damaged() {
  const out = {};
  out.status = await call(agent, 'GetStatus', {});
  out.verify = await call(agent, 'Verify', {});
  out.health = await call(checks, 'Check', { service: '' });
  out.forget_typo = await call(agent, 'Forget', { device_id: 'yes' });
  out.device_id = process.env.CONFIDE_DEVICE_ID;
  out.forget = await call(agent, 'Forget', { device_id: out.device_id });
  out.after = await call(agent, 'GetStatus', {});
  out.health_after = await call(checks, 'Check', { service: '' });
  process.stdout.write(JSON.stringify(out) + '\n');
  agent.close();
  checks.close();
}

(mode === 'damaged' ? damaged() : main()).catch((err) => {
  console.error(err);
  process.exit(1);
});
