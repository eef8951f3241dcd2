//! Generation: greedy or seeded sampling (temperature, top-k, top-p), stopping on EOS, stop strings or
//! a token limit, streaming text as it is produced, cancellable by the consumer.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::bloom::Bloom;
use super::cache::KvCache;
use super::tokenizer::{StreamDecoder, Tokenizer};
use super::ModelError;

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    /// Generation stops when the text contains one of these; it is not emitted.
    pub stop: Vec<String>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

impl GenerateParams {
    /// Checks ranges; the error names the bad field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::Input(m.to_string()));
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be at least 1");
        }
        if !(0.0..=100.0).contains(&self.temperature) || self.temperature.is_nan() {
            return bad("temperature must be within 0..=100");
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1");
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p must be within (0, 1]");
            }
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop strings must not be empty");
        }
        Ok(())
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Eos,
    StopString,
    MaxTokens,
    /// The consumer went away.
    Cancelled,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::StopString => "stop",
            Finish::MaxTokens => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub generated_tokens: Vec<i64>,
}

/// A conversation's model state across turns: its KV cache and the last sampled token, which has not
/// been run through the model yet (it is fed at the start of the next turn).
#[derive(Debug)]
pub struct Conversation {
    pub cache: KvCache,
    unfed: Vec<i64>,
}

impl Conversation {
    pub fn new(model: &Bloom) -> Conversation {
        Conversation {
            cache: model.new_cache(),
            unfed: Vec::new(),
        }
    }

    /// A conversation over `cache` (which may start with a shared prefix).
    pub fn with_cache(cache: KvCache) -> Conversation {
        Conversation {
            cache,
            unfed: Vec::new(),
        }
    }

    pub(crate) fn unfed_len(&self) -> usize {
        self.unfed.len()
    }

    pub(crate) fn take_unfed(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.unfed)
    }

    pub(crate) fn set_unfed(&mut self, token: Option<i64>) {
        self.unfed = token.into_iter().collect();
    }

    /// Tokens the model has seen, plus the one waiting to be fed.
    pub fn len(&self) -> usize {
        self.cache.len() + self.unfed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Picks the next token from f32 logits.
pub struct Sampler {
    params: GenerateParams,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    pub fn new(params: &GenerateParams) -> Sampler {
        Sampler {
            params: params.clone(),
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        }
    }

    /// The next token after `logits` (f32, one per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> Result<i64, ModelError> {
        if logits.is_empty() {
            return Err(ModelError::Input("no logits".into()));
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits) as i64);
        }
        // The softmax on libtorch (vectorized); the selection below in order of probability.
        let scaled =
            Tensor::f_from_slice(logits)?.f_div_scalar(f64::from(self.params.temperature))?;
        let probs: Vec<f32> = Vec::<f32>::try_from(scaled.f_softmax(0, tch::Kind::Float)?)?;
        let mut idx: Vec<usize> = (0..probs.len()).collect();
        // Top-k first (a partial selection), then top-p over what remains, most probable first.
        let k = self.params.top_k.unwrap_or(probs.len()).min(probs.len());
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, |&a, &b| probs[b].total_cmp(&probs[a]));
            idx.truncate(k);
        }
        idx.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        if let Some(p) = self.params.top_p {
            let mut acc = 0.0f32;
            let mut keep = idx.len();
            for (n, &i) in idx.iter().enumerate() {
                acc += probs[i];
                if acc >= p {
                    keep = n + 1;
                    break;
                }
            }
            idx.truncate(keep);
        }
        let total: f32 = idx.iter().map(|&i| probs[i]).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &i in &idx {
            r -= probs[i];
            if r <= 0.0 {
                return Ok(i as i64);
            }
        }
        Ok(*idx
            .last()
            .ok_or_else(|| ModelError::Input("empty distribution".into()))? as i64)
    }
}

/// The index of the largest value (the first of equals; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// What one sampled token did to a [`Generation`].
#[derive(Debug, Default)]
pub struct Advance {
    /// Text that became final (never splits a character, never includes a stop string).
    pub text: Option<String>,
    /// Set when generation ended with this token.
    pub finish: Option<Finish>,
}

/// One answer being generated, independent of how the model is run (alone, or in a batch with
/// others): it takes the logits after each step, samples, and says what text became final and
/// whether the answer is over; the caller feeds [`next`](Self::next) to the model.
pub struct Generation {
    params: GenerateParams,
    sampler: Sampler,
    decoder: StreamDecoder,
    pending: String,
    eos: Option<i64>,
    generated: Vec<i64>,
    last: Option<i64>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("generated", &self.generated.len())
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Checks the parameters; `eos` ends the answer when sampled.
    pub fn new(params: &GenerateParams, eos: Option<i64>) -> Result<Generation, ModelError> {
        params.validate()?;
        Ok(Generation {
            params: params.clone(),
            sampler: Sampler::new(params),
            decoder: StreamDecoder::default(),
            pending: String::new(),
            eos,
            generated: Vec::new(),
            last: None,
        })
    }

    /// Samples from the logits after the last token fed, and advances.
    pub fn advance(
        &mut self,
        logits: &[f32],
        tokenizer: &Tokenizer,
    ) -> Result<Advance, ModelError> {
        let token = self.sampler.sample(logits)?;
        if Some(token) == self.eos {
            self.last = None;
            return self.end(Finish::Eos, tokenizer);
        }
        self.generated.push(token);
        self.last = Some(token);
        let mut out = Advance::default();
        if let Some(text) = self.decoder.push(tokenizer, token)? {
            let (text, hit) = self.filter(&text);
            out.text = Some(text).filter(|t| !t.is_empty());
            if hit {
                out.finish = Some(Finish::StopString);
                return Ok(out);
            }
        }
        if self.generated.len() >= self.params.max_new_tokens {
            let end = self.end(Finish::MaxTokens, tokenizer)?;
            out.text = match (out.text, end.text) {
                (Some(a), Some(b)) => Some(a + &b),
                (a, b) => a.or(b),
            };
            out.finish = end.finish;
        }
        Ok(out)
    }

    /// The token to feed next (the last sampled one), if the answer goes on.
    pub fn next(&self) -> Option<i64> {
        self.last
    }

    /// The last sampled token when the answer is over: not run through the model yet, it belongs
    /// at the start of the conversation's next turn (none after EOS).
    pub fn unfed(&self) -> Option<i64> {
        self.last
    }

    /// Tokens generated so far (EOS excluded).
    pub fn generated(&self) -> &[i64] {
        &self.generated
    }

    /// Ends the answer: what the decoder and the stop filter held back is final now.
    fn end(&mut self, finish: Finish, tokenizer: &Tokenizer) -> Result<Advance, ModelError> {
        let tail = self.decoder.finish(tokenizer)?.unwrap_or_default();
        let (mut text, hit) = self.filter(&tail);
        if !hit {
            text.push_str(&std::mem::take(&mut self.pending));
        }
        Ok(Advance {
            text: Some(text).filter(|t| !t.is_empty()),
            finish: Some(if hit { Finish::StopString } else { finish }),
        })
    }

    /// Holds back text that may be the start of a stop string; returns what is safe to emit and
    /// whether a stop string was hit (what follows it is dropped).
    fn filter(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        let stop = &self.params.stop;
        if let Some(pos) = stop
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..pos].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in stop {
            for n in (1..s.len().min(self.pending.len() + 1)).rev() {
                if self.pending.is_char_boundary(self.pending.len() - n)
                    && s.starts_with(&self.pending[self.pending.len() - n..])
                {
                    keep = keep.max(n);
                    break;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }
}

/// Generates after `prompt` in `conversation`, calling `on_text` with each piece of text as soon as it
/// completes; `on_text` returns `false` to cancel (the client went away).
pub fn generate(
    model: &Bloom,
    tokenizer: &Tokenizer,
    conversation: &mut Conversation,
    prompt: &[i64],
    params: &GenerateParams,
    eos: Option<i64>,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Outcome, ModelError> {
    let mut generation = Generation::new(params, eos)?;
    let mut feed: Vec<i64> = std::mem::take(&mut conversation.unfed);
    feed.extend_from_slice(prompt);
    conversation
        .cache
        .reserve(feed.len() + params.max_new_tokens)?;
    let finish = loop {
        let logits = model.forward(&feed, &mut conversation.cache)?;
        let step = generation.advance(&logits, tokenizer)?;
        if let Some(text) = &step.text {
            if !on_text(text) {
                break Finish::Cancelled;
            }
        }
        if let Some(finish) = step.finish {
            break finish;
        }
        feed = generation.next().into_iter().collect();
    };
    // The last sampled token (not EOS) has not been run through the model: feed it next turn.
    conversation.unfed = generation.unfed().into_iter().collect();
    Ok(Outcome {
        finish,
        prompt_tokens: prompt.len(),
        generated_tokens: generation.generated().to_vec(),
    })
}

/// Plain greedy continuation of `ids` by `n` tokens, without a tokenizer (for model checks).
pub fn greedy_ids(model: &Bloom, ids: &[i64], n: usize) -> Result<Vec<i64>, ModelError> {
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(n);
    let mut logits = model.forward(ids, &mut cache)?;
    for i in 0..n {
        let t = argmax(&logits) as i64;
        out.push(t);
        if i + 1 < n {
            logits = model.forward(&[t], &mut cache)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{GenerateParams, Generation};

    #[test]
    fn stop_filter_holds_back_prefixes_and_cuts_at_the_stop() {
        let params = GenerateParams {
            stop: vec!["\nUser:".to_string()],
            ..Default::default()
        };
        let mut g = Generation::new(&params, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.filter("Hello"), ("Hello".to_string(), false));
        assert_eq!(g.filter(" there\nUs"), (" there".to_string(), false));
        assert_eq!(g.filter("er: next"), (String::new(), true));
        let mut g = Generation::new(&params, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.filter("a\nU"), ("a".to_string(), false));
        assert_eq!(g.filter("nder"), ("\nUnder".to_string(), false));
    }
}
