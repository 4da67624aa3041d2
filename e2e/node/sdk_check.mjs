// sdk_check.mjs drives a running vbatch cluster with the official openai
// Node SDK and checks that every object, status code and error class is the
// one the SDK expects. e2e/nodesdk_test.go runs it against a real cluster.
//
// Environment:
//   VBATCH_BASE_URL  the API base URL, e.g. http://127.0.0.1:8080/v1
//   VBATCH_API_KEY   a key with admin (or batch and inference) scope
//   VBATCH_MODEL     a model an agent of the cluster serves
//
// On success it prints one line of JSON and exits 0; on any failure it
// prints what failed and exits 1.
import assert from 'node:assert/strict';
import { File as BufferFile } from 'node:buffer';
import OpenAI, {
  APIError,
  AuthenticationError,
  BadRequestError,
  ConflictError,
  NotFoundError,
  toFile,
} from 'openai';
import { VERSION } from 'openai/version';

// Node 18 (the nodejs of Debian 12, which .ci/run installs) has File only
// in node:buffer; the SDK's uploads need the global and its error message
// says to set it so. Node 20 and later have it already.
globalThis.File ??= BufferFile;

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return v;
};

const baseURL = env('VBATCH_BASE_URL');
const apiKey = env('VBATCH_API_KEY');
const model = env('VBATCH_MODEL');
// A model no agent serves: a batch for it waits in_progress, which makes
// it a live batch for the 409 and cancel checks.
const unservedModel = `${model}-nobody-serves-this`;
const batchLines = 20;
const deadlineMs = 90_000;

// Retries would hide the status codes under test.
const client = new OpenAI({ apiKey, baseURL, maxRetries: 0, timeout: 30_000 });
// A client with the SDK's default retries (2, on 408, 409, 429 and 5xx
// unless the answer says X-Should-Retry: false), counting its requests.
let requests = 0;
const retrying = new OpenAI({
  apiKey,
  baseURL,
  timeout: 30_000,
  fetch: (url, init) => {
    requests++;
    return fetch(url, init);
  },
});

const summary = { sdk: VERSION, checks: [] };
let step = 'start';
const check = (name) => {
  step = name;
  summary.checks.push(name);
};

function chatJSONL(n, forModel, prefix) {
  let s = '';
  for (let i = 0; i < n; i++) {
    s += JSON.stringify({
      custom_id: `${prefix}-${i}`,
      method: 'POST',
      url: '/v1/chat/completions',
      body: { model: forModel, messages: [{ role: 'user', content: `question number ${i}` }], max_tokens: 8 },
    }) + '\n';
  }
  return s;
}

async function upload(name, text) {
  const file = await client.files.create({
    file: await toFile(Buffer.from(text, 'utf8'), name, { type: 'application/jsonl' }),
    purpose: 'batch',
  });
  assert.equal(file.object, 'file');
  assert.match(file.id, /^file-/);
  assert.equal(file.bytes, Buffer.byteLength(text, 'utf8'));
  assert.equal(file.filename, name);
  assert.equal(file.purpose, 'batch');
  assert.equal(typeof file.created_at, 'number');
  assert.equal(typeof file.status, 'string');
  return file;
}

async function contentBytes(id) {
  const resp = await client.files.content(id);
  assert.equal(resp.status, 200);
  return Buffer.from(await resp.arrayBuffer());
}

async function createBatch(fileID, metadata) {
  const b = await client.batches.create({
    input_file_id: fileID,
    endpoint: '/v1/chat/completions',
    completion_window: '24h',
    metadata,
  });
  assert.equal(b.object, 'batch');
  assert.match(b.id, /^batch_/);
  assert.equal(b.input_file_id, fileID);
  assert.equal(b.endpoint, '/v1/chat/completions');
  assert.equal(b.completion_window, '24h');
  assert.ok(['validating', 'in_progress'].includes(b.status), `new batch status ${b.status}`);
  assert.equal(typeof b.created_at, 'number');
  assert.deepEqual(b.metadata ?? null, metadata ?? null);
  return b;
}

async function waitBatch(id, done, what) {
  const until = Date.now() + deadlineMs;
  let last;
  for (;;) {
    last = await client.batches.retrieve(id);
    if (done(last)) {
      return last;
    }
    if (Date.now() > until) {
      throw new Error(`batch ${id} did not become ${what} in ${deadlineMs} ms; last: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

// expectError checks that p rejects with an instance of cls and status.
async function expectError(p, cls, status) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof APIError, `not an APIError: ${err}`);
    assert.ok(err instanceof cls, `${err.constructor.name} (status ${err.status}), want ${cls.name}: ${err.message}`);
    assert.equal(err.status, status);
    assert.equal(typeof err.error?.message, 'string', `error body ${JSON.stringify(err.error)}`);
    assert.equal(typeof err.type, 'string');
    assert.ok(err.requestID, 'no x-request-id on the error response');
    return true;
  });
}

async function main() {
  // Files: upload, retrieve, content byte for byte.
  check('files.create');
  const inputText = chatJSONL(batchLines, model, 'req');
  const input = await upload('sdk-input.jsonl', inputText);

  check('files.retrieve');
  const got = await client.files.retrieve(input.id);
  assert.equal(got.id, input.id);
  assert.equal(got.bytes, input.bytes);
  assert.equal(got.filename, input.filename);

  check('files.content');
  const bytes = await contentBytes(input.id);
  assert.equal(Buffer.compare(bytes, Buffer.from(inputText, 'utf8')), 0, 'file content differs from the upload');
  assert.equal((await client.files.content(input.id).then((r) => r.text())), inputText);

  // Batches: three so that listing with limit 1 spans pages.
  check('batches.create');
  const metadata = { suite: 'node-sdk', run: String(process.pid) };
  const first = await createBatch(input.id, metadata);
  const second = await createBatch((await upload('sdk-second.jsonl', chatJSONL(3, model, 'two'))).id);

  check('batches.retrieve');
  const done = await waitBatch(first.id, (b) => ['completed', 'failed', 'expired', 'cancelled'].includes(b.status), 'completed');
  assert.equal(done.status, 'completed', `batch ended ${done.status}: ${JSON.stringify(done.errors)}`);
  assert.deepEqual(done.request_counts, { total: batchLines, completed: batchLines, failed: 0 });
  assert.deepEqual(done.metadata, metadata);
  assert.equal(done.model, model);
  for (const f of ['in_progress_at', 'finalizing_at', 'completed_at']) {
    assert.equal(typeof done[f], 'number', `${f} = ${done[f]}`);
  }
  assert.ok(done.output_file_id, 'completed batch has no output_file_id');

  check('batch output');
  const out = (await contentBytes(done.output_file_id)).toString('utf8');
  const seen = new Map();
  const outLines = out.split('\n').filter((l) => l !== '');
  for (const line of outLines) {
    const r = JSON.parse(line);
    seen.set(r.custom_id, (seen.get(r.custom_id) ?? 0) + 1);
    assert.equal(r.response?.status_code, 200, `line ${line}`);
    assert.equal(r.response.body.object, 'chat.completion');
    assert.equal(typeof r.response.body.choices[0].message.content, 'string');
    assert.equal(r.error, null);
  }
  assert.equal(outLines.length, batchLines);
  for (let i = 0; i < batchLines; i++) {
    assert.equal(seen.get(`req-${i}`), 1, `custom_id req-${i} appears ${seen.get(`req-${i}`) ?? 0} times`);
  }
  const outFile = await client.files.retrieve(done.output_file_id);
  assert.equal(outFile.purpose, 'batch_output');
  await waitBatch(second.id, (b) => b.status === 'completed', 'completed');

  // A bad file: the batch fails with 1-based line numbers.
  check('failed batch');
  const badText = chatJSONL(1, model, 'bad') + 'this line is not json\n' + chatJSONL(1, model, 'bad2');
  const bad = await createBatch((await upload('sdk-bad.jsonl', badText)).id);
  const failed = await waitBatch(bad.id, (b) => b.status !== 'validating' && b.status !== 'in_progress', 'failed');
  assert.equal(failed.status, 'failed', `bad batch ended ${failed.status}`);
  assert.equal(failed.errors?.object, 'list');
  assert.ok(failed.errors.data.length >= 1);
  assert.ok(failed.errors.data.some((e) => e.line === 2), `no error on line 2: ${JSON.stringify(failed.errors.data)}`);
  for (const e of failed.errors.data) {
    assert.equal(typeof e.code, 'string');
    assert.equal(typeof e.message, 'string');
  }
  assert.equal(typeof failed.failed_at, 'number');

  // A live batch (its model is served by nobody, so it waits): its input
  // cannot be deleted (409), then it is cancelled.
  check('files.delete conflict');
  const liveInput = await upload('sdk-live.jsonl', chatJSONL(2, unservedModel, 'live'));
  const live = await createBatch(liveInput.id, { purpose: 'cancel' });
  await expectError(client.files.delete(liveInput.id), ConflictError, 409);
  // A state conflict is not worth retrying: the answer says so.
  requests = 0;
  await expectError(retrying.files.delete(liveInput.id), ConflictError, 409);
  assert.equal(requests, 1, `the SDK sent ${requests} requests for one 409 (X-Should-Retry: false missing?)`);
  check('batches.cancel');
  const cancelled = await client.batches.cancel(live.id);
  assert.equal(cancelled.id, live.id);
  assert.ok(['cancelling', 'cancelled'].includes(cancelled.status), `cancel answered ${cancelled.status}`);
  const ended = await waitBatch(live.id, (b) => b.status === 'cancelled', 'cancelled');
  assert.equal(typeof ended.cancelled_at, 'number');

  // Lists, with auto-pagination over more than one page.
  check('files.list');
  const firstPage = await client.files.list({ purpose: 'batch', limit: 2 });
  assert.equal(firstPage.data.length, 2);
  assert.equal(firstPage.has_more, true);
  assert.ok(firstPage.hasNextPage());
  const listed = [];
  for await (const f of client.files.list({ purpose: 'batch', limit: 2 })) {
    assert.equal(f.purpose, 'batch');
    listed.push(f.id);
  }
  assert.equal(new Set(listed).size, listed.length, `files listed twice: ${listed}`);
  assert.ok(listed.length >= 4, `listed ${listed.length} batch files`);
  assert.ok(listed.includes(input.id) && listed.includes(liveInput.id), 'an uploaded file is missing from the list');
  assert.ok(!listed.includes(done.output_file_id), 'purpose filter let a batch_output file through');

  check('batches.list');
  const batchIDs = [];
  let pages = 0;
  for await (const page of (await client.batches.list({ limit: 1 })).iterPages()) {
    pages++;
    assert.ok(page.data.length <= 1);
    batchIDs.push(...page.data.map((b) => b.id));
  }
  assert.ok(pages >= 4, `batches listed in ${pages} pages`);
  for (const id of [first.id, second.id, bad.id, live.id]) {
    assert.ok(batchIDs.includes(id), `batch ${id} missing from the list ${batchIDs}`);
  }
  assert.equal(new Set(batchIDs).size, batchIDs.length, `batches listed twice: ${batchIDs}`);
  const autoIDs = [];
  for await (const b of client.batches.list({ limit: 1 })) {
    assert.equal(b.object, 'batch');
    autoIDs.push(b.id);
  }
  assert.deepEqual(new Set(autoIDs), new Set(batchIDs));

  // Delete: the ended batch's input can go now; a second delete is a 404.
  check('files.delete');
  const del = await client.files.delete(liveInput.id);
  assert.deepEqual(del, { id: liveInput.id, object: 'file', deleted: true });
  await expectError(client.files.retrieve(liveInput.id), NotFoundError, 404);

  // Error classes.
  check('errors');
  await expectError(client.files.retrieve('file-doesnotexist'), NotFoundError, 404);
  await expectError(client.batches.retrieve('batch_doesnotexist'), NotFoundError, 404);
  await expectError(
    client.batches.create({ input_file_id: input.id, endpoint: '/v1/nonsense', completion_window: '24h' }),
    BadRequestError,
    400,
  );
  const wrong = new OpenAI({ apiKey: 'vb-wrongwrongwrongwrongwrongwrongwrongwrong', baseURL, maxRetries: 0 });
  await expectError(wrong.files.list(), AuthenticationError, 401);
  await expectError(wrong.models.list(), AuthenticationError, 401);

  // Models and online chat.
  check('models.list');
  const models = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.created, 'number');
    assert.equal(typeof m.owned_by, 'string');
    models.push(m.id);
  }
  assert.ok(models.includes(model), `models ${models} lack ${model}`);
  const one = await client.models.retrieve(model);
  assert.equal(one.id, model);
  // created: when the first live agent serving the model registered.
  const now = Math.floor(Date.now() / 1000);
  assert.ok(one.created > now - 3600 && one.created <= now + 60, `model created ${one.created}, now ${now}`);

  check('chat.completions');
  const messages = [{ role: 'user', content: 'hello there' }];
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 16 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  const answer = chat.choices[0].message.content;
  assert.ok(answer, 'empty chat answer');
  assert.ok(chat.usage.total_tokens > 0);

  check('chat.completions stream');
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 16, stream: true });
  let text = '';
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    for (const c of chunk.choices) {
      text += c.delta?.content ?? '';
      finish = c.finish_reason ?? finish;
    }
  }
  assert.ok(chunks >= 2, `${chunks} chunks`);
  assert.equal(text, answer);
  assert.ok(finish, 'no finish_reason in the stream');

  summary.ok = true;
  summary.batches = batchIDs.length;
  summary.files_listed = listed.length;
  console.log(JSON.stringify(summary));
}

main().catch((err) => {
  console.error(`sdk_check FAILED at step "${step}": ${err?.stack ?? err}`);
  if (err instanceof APIError) {
    console.error(`status ${err.status}, body ${JSON.stringify(err.error)}`);
  }
  process.exit(1);
});
