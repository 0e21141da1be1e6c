/**
 * The activation of a gated (Llama-family) FFN, from config.json or from
 * `flashlm convert --activation`. The published forms:
 *   - ReluLLaMA (SparseLLM/ReluLLaMA-7B): model_type "llama", hidden_act "relu";
 *   - ProSparse (SparseLLM/prosparse-llama-2-7b): model_type "sparsellama",
 *     hidden_act "fatrelu" with its threshold in "hidden_act_param" (0.01);
 *   - TurboSparse / Bamboo (PowerInfer/TurboSparse-Mistral-Instruct): model_type
 *     "bamboo", hidden_act "relu", applied to gate AND up in the custom modeling
 *     code (dReLU) — so "bamboo" + "relu" reads as dReLU.
 */
import { ArgumentError } from '../errors.js';
import type { ArchConfig, GatedActivation } from '../format/types.js';
import type { JsonConfig } from './safetensors.js';

/** A gated activation and (fatrelu) its threshold. */
export interface ActivationChoice {
  act: GatedActivation;
  threshold?: number;
}

/** The gated activation a Llama-family config.json asks for (hidden_act, hidden_act_param, model_type). */
export function configActivation(cfg: JsonConfig): ActivationChoice {
  const act = cfg.str('hidden_act', 'silu');
  if (act === 'silu' || act === 'swish') return { act: 'silu' };
  if (act === 'relu') return { act: cfg.values['model_type'] === 'bamboo' ? 'drelu' : 'relu' };
  if (act === 'fatrelu') {
    const t = cfg.values['hidden_act_param'];
    if (typeof t !== 'number' || !Number.isFinite(t)) cfg.fail('hidden_act_param', `must be the FATReLU threshold (a finite number), got ${JSON.stringify(t)}`);
    return { act: 'fatrelu', threshold: t };
  }
  return cfg.fail('hidden_act', `is ${JSON.stringify(act)}: supported are silu (SwiGLU), relu, fatrelu (with hidden_act_param); for dReLU use --activation drelu`);
}

/** `--activation relu|fatrelu=T|drelu|silu` parsed; an ArgumentError naming the value otherwise. */
export function parseActivation(flag: string): ActivationChoice {
  const m = /^fatrelu=(.+)$/.exec(flag);
  if (m) {
    const t = Number(m[1]);
    if (!m[1]!.trim() || !Number.isFinite(t)) throw new ArgumentError(`--activation ${flag}: the FATReLU threshold must be a finite number (e.g. fatrelu=0.01)`);
    return { act: 'fatrelu', threshold: t };
  }
  if (flag === 'relu' || flag === 'drelu' || flag === 'silu') return { act: flag };
  throw new ArgumentError(`--activation ${JSON.stringify(flag)}: expected relu, fatrelu=T, drelu or silu`);
}

/** The arch fields for a choice (SiLU: none, so SiLU files stay as before). */
export function activationFields(c: ActivationChoice): Pick<ArchConfig, 'gatedAct' | 'gatedActThreshold'> {
  if (c.act === 'silu') return {};
  return c.act === 'fatrelu' ? { gatedAct: 'fatrelu', gatedActThreshold: c.threshold ?? 0 } : { gatedAct: c.act };
}

/** `arch` with its gated activation set to `c` (any previous one dropped). */
export function withActivation(arch: ArchConfig, c: ActivationChoice): ArchConfig {
  const { gatedAct: _a, gatedActThreshold: _t, ...rest } = arch;
  return { ...rest, ...activationFields(c) };
}
