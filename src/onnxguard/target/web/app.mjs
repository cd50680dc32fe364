// onnxguard web target: run the bundle's golden set with onnxruntime-web (WASM) and compare the outputs with
// the source framework's references. The metrics are the ones `onnxguard consistency` uses; the result is also
// left in `window.onnxguardResult` (and document.body.dataset.status) for a headless browser to read.
import * as ort from './ort/ort.wasm.min.mjs';

const $ = (id) => document.getElementById(id);

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, int32: Int32Array, int16: Int16Array,
  int8: Int8Array, uint8: Uint8Array, uint16: Uint16Array, bool: Uint8Array, float16: Uint16Array,
};

function decode(t) {
  if (t.dtype === 'string') return new ort.Tensor('string', t.data, t.shape);
  const raw = Uint8Array.from(atob(t.data), (c) => c.charCodeAt(0));
  return new ort.Tensor(t.dtype, new ARRAYS[t.dtype](raw.buffer), t.shape);
}

function encode(tensor) {
  if (tensor.type === 'string') return { dtype: 'string', shape: tensor.dims, data: Array.from(tensor.data) };
  const bytes = new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { dtype: tensor.type, shape: tensor.dims, data: btoa(s) };
}

function halfToFloat(h) {
  const e = (h >> 10) & 0x1f, f = h & 0x3ff, s = h & 0x8000 ? -1 : 1;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

function numbers(tensor) {
  if (tensor.type === 'float16' && tensor.data instanceof Uint16Array) return Array.from(tensor.data, halfToFloat);
  return Array.from(tensor.data, Number);
}

function rows(values, dims) {
  const n = dims.length ? dims[0] : 1;
  const width = n ? values.length / n : 0;
  return Array.from({ length: n }, (_, i) => values.slice(i * width, (i + 1) * width));
}

function softmax(row) {
  const m = Math.max(...row);
  const e = row.map((v) => Math.exp(v - m));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

const argmax = (row) => row.reduce((best, v, i) => (v > row[best] ? i : best), 0);

// KL(p || q) of one row, probabilities clipped to [1e-12, 1] as in consistency.py.
function kl(p, q) {
  let total = 0;
  for (let i = 0; i < p.length; i += 1) {
    const a = Math.min(Math.max(p[i], 1e-12), 1), b = Math.min(Math.max(q[i], 1e-12), 1);
    total += a * Math.log(a / b);
  }
  return total;
}

// The drift of every output over every batch: max and mean |diff|, KL of the softmax and top-1 for scores,
// agreement for labels.
function measure(references, outputs, roles, labels) {
  const labelOf = (i) => (labels && labels[i] !== undefined ? String(labels[i]) : String(i));
  const per = {};
  references.forEach((batch, b) => {
    for (const [name, ref] of Object.entries(batch)) {
      const out = outputs[b][name];
      const o = (per[name] ??= { role: roles[name] ?? 'values', ref: [], out: [], dims: [] });
      o.ref.push(...rows(ref.type === 'string' ? Array.from(ref.data) : numbers(ref), ref.dims));
      o.out.push(...rows(out.type === 'string' ? Array.from(out.data) : numbers(out), out.dims));
    }
  });
  const m = { max_abs: 0, mean_abs: 0, kl: null, top1: null, label_agreement: null, predictions: [] };
  for (const [name, o] of Object.entries(per)) {
    if (o.role === 'labels') {
      const agree = o.ref.filter((r, i) => String(r) === String(o.out[i])).length / Math.max(o.ref.length, 1);
      m.label_agreement = Math.min(m.label_agreement ?? 1, agree);
      if (!m.predictions.length) m.predictions = o.ref.map((r, i) => ({ reference: String(r), browser: String(o.out[i]) }));
      continue;
    }
    let max = 0, sum = 0, count = 0;
    o.ref.forEach((r, i) => r.forEach((v, j) => {
      const d = Math.abs(v - o.out[i][j]);
      max = Math.max(max, Number.isNaN(d) ? Infinity : d); sum += d; count += 1;
    }));
    m.max_abs = Math.max(m.max_abs, max);
    m.mean_abs = Math.max(m.mean_abs, count ? sum / count : 0);
    if (o.role === 'scores') {
      const probabilities = o.ref.every((r) => r.every((v) => v >= 0) && Math.abs(r.reduce((a, b) => a + b, 0) - 1) <= 1e-3);
      let klSum = 0, agree = 0;
      o.ref.forEach((r, i) => {
        const p = probabilities ? r : softmax(r), q = probabilities ? o.out[i] : softmax(o.out[i]);
        klSum += kl(p, q);
        if (argmax(r) === argmax(o.out[i])) agree += 1;
      });
      m.kl = Math.max(m.kl ?? 0, klSum / Math.max(o.ref.length, 1));
      m.top1 = Math.min(m.top1 ?? 1, agree / Math.max(o.ref.length, 1));
      m.predictions = o.ref.map((r, i) => ({ reference: labelOf(argmax(r)), browser: labelOf(argmax(o.out[i])) }));
    }
  }
  return m;
}

const fmt = (v, digits = 3) => (v === null || v === undefined ? '-' : Number(v).toPrecision(digits));

function showParity(m, limits, msPerItem, items) {
  const checks = [
    ['max |diff|', fmt(m.max_abs), `≤ ${limits.max_abs}`, m.max_abs <= limits.max_abs],
    ['mean |diff|', fmt(m.mean_abs), '', true],
    ['KL (softmax)', fmt(m.kl, 2), m.kl === null ? '' : `≤ ${limits.max_kl}`, m.kl === null || m.kl <= limits.max_kl],
    ['top-1 agreement', m.top1 === null ? '-' : `${(100 * m.top1).toFixed(2)} %`,
      m.top1 === null ? '' : `≥ ${100 * limits.min_top1} %`, m.top1 === null || m.top1 >= limits.min_top1],
    ['label agreement', m.label_agreement === null ? '-' : `${(100 * m.label_agreement).toFixed(2)} %`,
      m.label_agreement === null ? '' : `≥ ${100 * limits.min_top1} %`,
      m.label_agreement === null || m.label_agreement >= limits.min_top1],
    ['latency per item', `${msPerItem.toFixed(3)} ms`, '', true],
  ];
  $('parity').innerHTML = '<tr><th>measure</th><th>value</th><th>threshold</th><th></th></tr>';
  for (const [label, value, limit, ok] of checks) {
    if (value === '-') continue; // a measure this model's outputs do not have
    const tr = $('parity').insertRow();
    [label, value, limit].forEach((text) => { tr.insertCell().textContent = text; });
    const cell = tr.insertCell();
    cell.textContent = limit ? (ok ? 'ok' : 'drift') : '';
    cell.className = ok ? 'ok' : 'bad';
  }
  const passed = checks.every((c) => c[3]);
  $('verdict').innerHTML = `<span class="${passed ? 'ok' : 'bad'}">${passed ? 'PASSED' : 'FAILED'}</span>: ${items} golden examples`;
  $('parity-section').hidden = false;
  return passed;
}

function showPredictions(predictions) {
  if (!predictions.length) return;
  $('predictions').innerHTML = '<tr><th>golden item</th><th>source framework (top-1)</th><th>this browser (top-1)</th></tr>';
  predictions.slice(0, 8).forEach((p, i) => {
    const tr = $('predictions').insertRow();
    [String(i), p.reference, p.browser].forEach((text) => { tr.insertCell().textContent = text; });
  });
  $('predictions-section').hidden = false;
}

function describe(outputs, roles, labels) {
  return Object.entries(outputs).map(([name, t]) => {
    const values = t.type === 'string' ? Array.from(t.data) : numbers(t);
    if (roles[name] === 'scores') {
      const p = values.every((v) => v >= 0) && Math.abs(values.reduce((a, b) => a + b, 0) - 1) <= 1e-3 ? values : softmax(values);
      const top = p.map((v, i) => [i, v]).sort((a, b) => b[1] - a[1]).slice(0, 3);
      return `${name}: ` + top.map(([i, v]) => `class ${labels?.[i] ?? i} ${(100 * v).toFixed(1)} %`).join(', ');
    }
    return `${name}: ${values.slice(0, 10).map(String).join(', ')}${values.length > 10 ? ', …' : ''}`;
  }).join('\n');
}

async function tryOne(session, name, dims, values, roles, labels) {
  const outputs = await session.run({ [name]: new ort.Tensor('float32', Float32Array.from(values), dims) });
  $('try-result').textContent = describe(outputs, roles, labels);
  $('try-result').hidden = false;
}

function offerTry(session, manifest, golden, roles) {
  const inputs = manifest.model.inputs;
  if (inputs.some((i) => i.dtype !== 'float32')) {
    $('text-note').hidden = !inputs.some((i) => i.dtype.startsWith('int'));
    return;
  }
  if (inputs.length !== 1) return;
  const name = inputs[0].name;
  const sample = golden.batches[0].inputs[name];
  const values = Array.from(decode(sample).data);
  let lo = Infinity, hi = -Infinity; // the golden inputs' value range, decoded once
  for (const b of golden.batches) {
    for (const v of decode(b.inputs[name]).data) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (sample.shape.length === 4 && [1, 3].includes(sample.shape[1])) {
    const [, c, h, w] = sample.shape;
    $('try-image').hidden = false;
    $('image-file').addEventListener('change', async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      const canvas = $('preview');
      canvas.width = w; canvas.height = h;
      const ctx = canvas.getContext('2d');
      ctx.drawImage(await createImageBitmap(file), 0, 0, w, h);
      const px = ctx.getImageData(0, 0, w, h).data;
      const data = new Float32Array(c * h * w);
      for (let i = 0; i < h * w; i += 1) {
        for (let k = 0; k < c; k += 1) {
          let v = (c === 1 ? (px[4 * i] + px[4 * i + 1] + px[4 * i + 2]) / 3 : px[4 * i + k]) / 255;
          if ($('invert').checked) v = 1 - v;
          data[k * h * w + i] = lo + v * (hi - lo);
        }
      }
      await tryOne(session, name, [1, c, h, w], data, roles, manifest.labels);
    });
  } else if (sample.shape.length === 2) {
    const width = sample.shape[1];
    $('row').value = values.slice(0, width).map((v) => Number(v.toPrecision(6))).join(', ');
    $('try-table').hidden = false;
    $('run-row').addEventListener('click', async () => {
      const row = $('row').value.split(/[\s,]+/).filter(Boolean).map(Number);
      if (row.length !== width || row.some(Number.isNaN)) {
        $('try-result').textContent = `enter ${width} numbers separated by commas`;
        $('try-result').hidden = false;
        return;
      }
      await tryOne(session, name, [1, width], row, roles, manifest.labels);
    });
  }
}

async function main() {
  const manifest = await (await fetch('manifest.json')).json();
  $('title').textContent = `${manifest.parent.name} ${manifest.parent.version}: web target`;
  $('provenance').textContent = `parent bundle manifest sha256 ${manifest.parent.manifest_sha256} · ` +
    `model sha256 ${manifest.files['model.onnx'].sha256} · ${manifest.runtime}`;
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated pages (COOP + COEP headers).
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.proxy = true; // inference in a worker: the page stays responsive while a large model runs
  $('threads-note').textContent = self.crossOriginIsolated
    ? `Cross-origin isolated: ${ort.env.wasm.numThreads} WASM threads.`
    : 'Not cross-origin isolated: one WASM thread. Serve with the headers Cross-Origin-Opener-Policy: same-origin and ' +
      'Cross-Origin-Embedder-Policy: require-corp to use threads.';
  $('status').textContent = 'loading the model…';
  const session = await ort.InferenceSession.create('model.onnx', { executionProviders: ['wasm'] });
  const golden = await (await fetch('golden.json')).json();
  const roles = Object.fromEntries(manifest.model.outputs.map((o) => [o.name, o.role]));
  const inputs = golden.batches.map((b) => Object.fromEntries(Object.entries(b.inputs).map(([k, v]) => [k, decode(v)])));
  const references = golden.batches.map((b) => Object.fromEntries(Object.entries(b.references).map(([k, v]) => [k, decode(v)])));
  const wanted = Object.keys(golden.batches[0].references);
  $('status').textContent = `running ${golden.items} golden examples…`;
  // The proxy worker takes each input's buffer; every run gets its own copies, made before the clock starts.
  const fresh = (feeds) => Object.fromEntries(Object.entries(feeds).map(([k, t]) => [k,
    t.type === 'string' ? new ort.Tensor('string', [...t.data], t.dims) : new ort.Tensor(t.type, t.data.slice(), t.dims)]));
  await session.run(fresh(inputs[0]), wanted); // warm-up, not timed
  // ?repeat=N times the golden set N times (benchmarks/targets.py) and reports the median pass.
  const repeat = Math.max(1, Math.min(1000, Number(new URLSearchParams(location.search).get('repeat')) || 1));
  let outputs = [];
  const samples = [];
  for (let r = 0; r < repeat; r += 1) {
    outputs = [];
    const pass = inputs.map(fresh);
    const start = performance.now();
    for (const feeds of pass) outputs.push(await session.run(feeds, wanted));
    samples.push((performance.now() - start) / Math.max(golden.items, 1));
  }
  const msPerItem = [...samples].sort((a, b) => a - b)[Math.floor(samples.length / 2)];
  const metrics = measure(references, outputs, roles, manifest.labels);
  const passed = showParity(metrics, manifest.thresholds, msPerItem, golden.items);
  showPredictions(metrics.predictions);
  offerTry(session, manifest, golden, roles);
  $('status').textContent = `onnxruntime-web ${ort.env.versions?.web ?? ''} · WASM backend · ${ort.env.wasm.numThreads} thread(s)`;
  window.onnxguardResult = {
    status: 'done', passed, items: golden.items, ms_per_item: msPerItem, samples_ms_per_item: samples,
    threads: ort.env.wasm.numThreads,
    metrics: { max_abs: metrics.max_abs, mean_abs: metrics.mean_abs, kl: metrics.kl, top1: metrics.top1,
               label_agreement: metrics.label_agreement },
    outputs: outputs.map((batch) => Object.fromEntries(Object.entries(batch).map(([k, t]) => [k, encode(t)]))),
  };
  document.body.dataset.status = 'done';
}

main().catch((error) => {
  const message = String(error?.message ?? error);
  $('status').innerHTML = '';
  const span = document.createElement('span');
  span.className = 'bad';
  span.textContent = `error: ${message}`;
  $('status').append(span);
  window.onnxguardResult = { status: 'error', error: message };
  document.body.dataset.status = 'error';
});
