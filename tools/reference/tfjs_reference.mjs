// Runs TF.js graph models from disk on the CPU backend and writes chosen node outputs.
//
//   node tools/reference/tfjs_reference.mjs <node_modules folder> <job folder>
//
// <node_modules folder> holds the pinned @tensorflow/tfjs-core, -backend-cpu and
// -converter (installed by make_human_reference.py into a temp folder, never the repo).
// <job folder>/job.json: {"runs": [{"model": "/abs/path/model.json", "input_node": "data",
//   "input": "x.f32", "shape": [N, H, W, C], "outputs": {"key": "graph/node", ...}}]}
// with the input as raw little-endian float32 (NHWC). For every output key it writes
// <job folder>/<key>.f32 (raw float32) and lists the shapes and the package versions
// in <job folder>/result.json.
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const [modulesDir, jobDir] = process.argv.slice(2);
if (!modulesDir || !jobDir) {
  console.error('usage: node tfjs_reference.mjs <node_modules folder> <job folder>');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(modulesDir), 'index.js'));
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfconv = require('@tensorflow/tfjs-converter');

// A TF.js IOHandler reading model.json + its weight shards from the local disk.
function diskHandler(modelJson) {
  return {
    load: async () => {
      const model = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
      const dir = path.dirname(modelJson);
      const weightSpecs = [];
      const shards = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const p of group.paths) shards.push(fs.readFileSync(path.join(dir, p)));
      }
      const data = Buffer.concat(shards);
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        weightSpecs,
        weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength),
      };
    },
  };
}

function readF32(file) {
  const buf = fs.readFileSync(file);
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
}

async function main() {
  await tf.setBackend('cpu');
  await tf.ready();
  const job = JSON.parse(fs.readFileSync(path.join(jobDir, 'job.json'), 'utf8'));
  const result = {
    backend: tf.getBackend(),
    versions: {
      'tfjs-core': tf.version_core,
      'tfjs-converter': tfconv.version_converter,
      'tfjs-backend-cpu': require('@tensorflow/tfjs-backend-cpu').version_cpu,
    },
    outputs: {},
  };
  for (const run of job.runs) {
    const model = await tfconv.loadGraphModel(diskHandler(run.model));
    const x = tf.tensor(readF32(path.join(jobDir, run.input)), run.shape, 'float32');
    const keys = Object.keys(run.outputs);
    let ys = model.execute({ [run.input_node]: x }, keys.map((k) => run.outputs[k]));
    if (!Array.isArray(ys)) ys = [ys];
    for (let i = 0; i < keys.length; i++) {
      const data = ys[i].dataSync();
      fs.writeFileSync(path.join(jobDir, `${keys[i]}.f32`),
        Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      result.outputs[keys[i]] = { node: run.outputs[keys[i]], shape: ys[i].shape };
    }
    tf.dispose([x, ...ys]);
    model.dispose();
  }
  fs.writeFileSync(path.join(jobDir, 'result.json'), JSON.stringify(result, null, 2));
  console.log(JSON.stringify(result));
}

main().catch((e) => { console.error(e); process.exit(1); });
