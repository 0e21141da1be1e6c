import { openCheckpoint } from '../convert/index.js';
import type { Layout } from '../format/layout.js';
import type { DType } from '../format/types.js';
import { writeFlm } from '../format/writer.js';
import { FileSink } from '../source/file-node.js';
import { fmtBytes } from '../engine/arena.js';
import { interruptSignal, progressBar } from './terminal.js';

export interface ConvertFlags {
  output: string;
  tokenizer?: string;
  dtype: DType;
  layout: Layout;
}

/** `flashlm convert`: writes to a temp name and renames at the end; Ctrl-C or an error leaves nothing behind. */
export async function runConvert(input: string, flags: ConvertFlags): Promise<void> {
  const ckpt = await openCheckpoint(input, { tokenizer: flags.tokenizer });
  const sink = await FileSink.create(flags.output);
  const interrupt = interruptSignal();
  const bar = progressBar('converting [{bar}] {percentage}% {written} / {size} eta {eta_formatted}');
  const t0 = performance.now();
  try {
    const header = await writeFlm(ckpt, sink, {
      dtype: flags.dtype,
      layout: flags.layout,
      meta: { source: input },
      signal: interrupt.signal,
      onProgress: (done, total) => {
        if (!bar) return;
        if (!bar.isActive) bar.start(total, 0, { size: fmtBytes(total), written: '0 B' });
        bar.update(done, { written: fmtBytes(done) });
      },
    });
    bar?.stop();
    const size = header.integrity.offset + header.integrity.length;
    process.stderr.write(`wrote ${flags.output}: ${header.arch.type}, ${header.dtype}, ${header.layout}, ${fmtBytes(size)} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  } catch (e) {
    bar?.stop();
    await sink.abort();
    throw e;
  } finally {
    interrupt.release();
    await ckpt.close();
  }
}
