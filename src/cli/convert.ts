import { openCheckpoint } from '../convert/index.js';
import { parseActivation } from '../convert/activation.js';
import type { Layout } from '../format/layout.js';
import type { DType } from '../format/types.js';
import { writeFlm } from '../format/writer.js';
import { FileSink } from '../source/file-node.js';
import { fmtBytes } from '../engine/arena.js';
import { interruptSignal, progressBar } from './terminal.js';
import { checkOutput, namedWriteError } from './output.js';

export interface ConvertFlags {
  output: string;
  tokenizer?: string;
  /** A file dtype, or the CLI's names: int8 (= q8, one scale per 32 weights) and int8-row (= the per-row int8). */
  dtype: DType | 'int8-row';
  /** Storage type of the 2-D resident tensors when it differs from dtype (same names as dtype). */
  residentDtype?: DType | 'int8-row';
  layout: Layout;
  /** Replace an existing file that is not a .flm. */
  force?: boolean;
  /** Gated FFN activation over config.json's hidden_act: relu, fatrelu=T, drelu, silu. */
  activation?: string;
}

/** The CLI's --dtype to the file's: `int8` means the grouped form (q8), `int8-row` the per-row one. */
export function fileDType(flag: ConvertFlags['dtype']): DType {
  return flag === 'int8' ? 'q8' : flag === 'int8-row' ? 'int8' : flag;
}

/** `flashlm convert`: writes to a temp name and renames at the end; Ctrl-C or an error leaves nothing behind. */
export async function runConvert(input: string, flags: ConvertFlags): Promise<void> {
  await checkOutput(flags.output, [input, flags.tokenizer], { force: flags.force });
  const activation = flags.activation === undefined ? undefined : parseActivation(flags.activation);
  const ckpt = await openCheckpoint(input, { tokenizer: flags.tokenizer, activation });
  for (const note of ckpt.notes ?? []) process.stderr.write(`note: ${note}\n`);
  // Signals are ours before the temporary file exists: one arriving in between must not leave it behind.
  const interrupt = interruptSignal();
  let sink: FileSink | undefined;
  const bar = progressBar('converting [{bar}] {percentage}% {written} / {size} eta {eta_formatted}');
  const t0 = performance.now();
  try {
    sink = await FileSink.create(flags.output);
    const header = await writeFlm(ckpt, sink, {
      dtype: fileDType(flags.dtype),
      ...(flags.residentDtype !== undefined ? { residentDtype: fileDType(flags.residentDtype) } : {}),
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
    const resident = new Set(header.tensors.filter((t) => t.shape.length === 2).map((t) => t.dtype));
    const dtypes = resident.size === 1 && !resident.has(header.dtype) ? `${header.dtype} FFN, ${[...resident][0]} resident` : header.dtype;
    process.stderr.write(`wrote ${flags.output}: ${header.arch.type}, ${dtypes}, ${header.layout}, ${fmtBytes(size)} in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  } catch (e) {
    bar?.stop();
    await sink?.abort();
    throw namedWriteError(e, flags.output);
  } finally {
    interrupt.release();
    await ckpt.close();
  }
}
