import { resolveSource } from '../node.js';
import { openFlm } from '../format/reader.js';
import { fmtBytes } from '../engine/arena.js';
import { httpOptions, type HttpFlags } from './options.js';

/** `flashlm inspect`: architecture, dims, dtypes, and every section with its size (a path or an http(s) URL). */
export async function runInspect(model: string, flags: { json?: boolean } & HttpFlags): Promise<void> {
  const source = await resolveSource(model, { http: httpOptions(flags) });
  try {
    const file = await openFlm(source);
    const h = file.header;
    if (flags.json) {
      const { tokenizer, ...rest } = h;
      const tok = tokenizer.kind === 'hf' ? { kind: 'hf', bytes: tokenizer.json.length } : { kind: 'llama2c', bytes: tokenizer.data.byteLength };
      process.stdout.write(JSON.stringify({ ...rest, tokenizer: tok, fileBytes: source.size }, null, 2) + '\n');
      return;
    }
    const a = h.arch;
    const out: string[] = [];
    out.push(`${model}: flashlm v${h.version}, ${fmtBytes(source.size)}`);
    const m = h.meta ?? {};
    if (m['synthetic'] === 'true') {
      // Written by `flashlm synth`: random weights of a real shape; its text means nothing, its activation statistics are designed.
      out.push(`synthetic     random weights (flashlm synth --shape ${m['synth.shape'] ?? '?'} --seed ${m['synth.seed'] ?? '?'}), about ${(100 * Number(m['synth.activeFraction'] ?? NaN)).toFixed(0)}% of FFN neurons active per token; not a trained model`);
    }
    out.push(`architecture  ${a.type}  (${a.norm}, ${a.gatedAct && a.gatedAct !== 'silu' ? `gated ${a.gatedAct}${a.gatedAct === 'fatrelu' ? ` T=${a.gatedActThreshold}` : ''}` : a.activation}, ${a.positions === 'rope' ? `rope ${a.ropeStyle} theta ${a.ropeTheta}` : `learned positions +${a.posOffset}`}, ${a.preNorm ? 'pre' : 'post'}-norm)`);
    const attn: string[] = [];
    const rs = a.ropeScaling;
    if (rs) attn.push(`rope scaling ${rs.type}${'factor' in rs ? ` x${rs.factor}` : ''}${'originalMaxPos' in rs ? ` (original context ${rs.originalMaxPos})` : ''}`);
    if (a.slidingWindow) attn.push(`sliding window ${a.slidingWindow}${a.slidingWindowStart ? ` from layer ${a.slidingWindowStart}` : ''}`);
    if (a.qkNorm) attn.push('per-head RMSNorm on q and k');
    if (attn.length) out.push(`attention     ${attn.join(', ')}`);
    out.push(`dims          d_model ${a.dModel}, layers ${a.nLayers}, heads ${a.nHeads} (kv ${a.nKvHeads}) x ${a.headDim}, ffn ${a.ffnDim}, vocab ${a.vocabSize}, context ${a.maxSeqLen}`);
    const dtypeNote = h.dtype === 'q8' ? ' (int8, one scale per 32 weights)' : h.dtype === 'int8' ? ' (int8, one scale per row)' : h.dtype === 'q4' ? ' (4-bit, one f16 scale per 32 weights)' : '';
    const otherDtypes = [...new Set(h.tensors.filter((t) => t.shape.length === 2).map((t) => t.dtype))].filter((d) => d !== h.dtype);
    out.push(`weights       ${h.dtype}${dtypeNote}${otherDtypes.length ? ` (FFN; resident matrices ${otherDtypes.join(', ')})` : ''}, FFN ${h.layout}, embeddings ${a.tiedEmbeddings ? 'tied' : 'untied'}, tokenizer ${h.tokenizer.kind}`);
    out.push(`tokens        bos ${a.bosId}, eos ${a.eosId}, stop on [${a.stopIds.join(', ')}]`);
    const f = h.ffn[0]!;
    out.push(`ffn records   ${f.parts.join('+')}, ${f.partBytes} B per part, stride ${f.stride} B${f.hasBias ? ', up bias' : ''}`);
    out.push('sections:');
    for (const s of h.sections) out.push(`  ${s.name.padEnd(10)} @ ${String(s.offset).padStart(12)}  ${fmtBytes(s.length).padStart(10)}  ${s.blockCount} blocks of ${s.blockBytes} B  xxh64 ${s.hash}`);
    out.push(`  integrity  @ ${String(h.integrity.offset).padStart(12)}  ${fmtBytes(h.integrity.length).padStart(10)}  xxh64 ${h.integrity.hash}`);
    const resident = file.section('resident').length;
    const ffn = h.ffn.reduce((s, e) => s + file.section(e.section).length, 0);
    out.push(`resident ${fmtBytes(resident)} (${((100 * resident) / (resident + ffn)).toFixed(1)}%), streamable FFN ${fmtBytes(ffn)} (${((100 * ffn) / (resident + ffn)).toFixed(1)}%)`);
    out.push(`tensors (${h.tensors.length}):`);
    for (const t of h.tensors) out.push(`  ${t.name.padEnd(28)} ${t.dtype.padEnd(5)} [${t.shape.join(', ')}]`);
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await source.close();
  }
}
