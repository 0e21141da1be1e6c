/**
 * One check of an OpenAI-compatible endpoint (the edge handler under Deno or
 * workerd) with the official `openai` client: the model list, a greedy
 * completion and a streamed chat answer equal to Node's own for the same
 * .flm, usage counts, and a 400 for a bad field.
 */
import type { ExecutionContext } from 'ava';
import OpenAI from 'openai';
import { MemorySource, openModel } from '../../src/node.js';

export async function checkOpenAiApi(t: ExecutionContext, baseUrl: string, model: Uint8Array, name: string, prompt: string, n: number): Promise<void> {
  const node = await openModel(new MemorySource(model));
  try {
    const client = new OpenAI({ apiKey: 'none', baseURL: baseUrl + '/v1', maxRetries: 0 });
    t.deepEqual((await client.models.list()).data.map((m) => m.id), [name]);
    const want = await node.complete(prompt, { maxTokens: n, temperature: 0 });
    const r = await client.completions.create({ model: name, prompt, max_tokens: n, temperature: 0 });
    t.is(r.choices[0]!.text, want);
    t.is(r.usage!.completion_tokens, node.timings!.tokens);
    const messages = [{ role: 'user' as const, content: 'In the morning she' }];
    let answer = '';
    for await (const p of node.chat(messages, { maxTokens: 16, temperature: 0 })) answer += p;
    const stream = await client.chat.completions.create({ model: name, messages, max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const c of stream) {
      text += c.choices[0]?.delta.content ?? '';
      usage ??= c.usage;
    }
    t.is(text, answer);
    t.is(usage?.completion_tokens, node.timings!.tokens);
    await t.throwsAsync(client.completions.create({ model: 'x', prompt: 'Hi', temperature: 9 }), { instanceOf: OpenAI.BadRequestError });
  } finally {
    await node.close();
  }
}
