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
            cache: KvCache::new(model.layers()),
            unfed: Vec::new(),
        }
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

    pub fn sample(&mut self, logits: &Tensor) -> Result<i64, ModelError> {
        if self.params.temperature == 0.0 {
            return Ok(logits.argmax(0, false).int64_value(&[]));
        }
        let scaled = logits / f64::from(self.params.temperature);
        let probs: Vec<f32> = Vec::<f32>::try_from(scaled.softmax(0, tch::Kind::Float))?;
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

/// Holds back text that may be the start of a stop string.
struct StopFilter<'a> {
    stop: &'a [String],
    pending: String,
}

impl StopFilter<'_> {
    /// Adds text; returns what is safe to emit and whether a stop string was hit.
    fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(pos) = self
            .stop
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
        for s in self.stop {
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
    params.validate()?;
    let mut sampler = Sampler::new(params);
    let mut decoder = StreamDecoder::default();
    let mut stop = StopFilter {
        stop: &params.stop,
        pending: String::new(),
    };
    let mut feed: Vec<i64> = std::mem::take(&mut conversation.unfed);
    feed.extend_from_slice(prompt);
    let mut generated = Vec::new();
    let finish = loop {
        let logits = model.forward(&feed, &mut conversation.cache)?;
        let token = sampler.sample(&logits)?;
        if Some(token) == eos {
            break Finish::Eos;
        }
        generated.push(token);
        feed = vec![token];
        if let Some(text) = decoder.push(tokenizer, token)? {
            let (out, hit) = stop.push(&text);
            if !out.is_empty() && !on_text(&out) {
                break Finish::Cancelled;
            }
            if hit {
                break Finish::StopString;
            }
        }
        if generated.len() >= params.max_new_tokens {
            break Finish::MaxTokens;
        }
    };
    // The last sampled token (not EOS) has not been run through the model: feed it next turn.
    if matches!(
        finish,
        Finish::StopString | Finish::MaxTokens | Finish::Cancelled
    ) {
        conversation.unfed = feed;
    }
    if matches!(finish, Finish::Eos | Finish::MaxTokens) {
        let mut tail = decoder.finish(tokenizer)?.unwrap_or_default();
        tail = stop.push(&tail).0 + &std::mem::take(&mut stop.pending);
        if !tail.is_empty() && !on_text(&tail) {
            return Ok(Outcome {
                finish: Finish::Cancelled,
                prompt_tokens: prompt.len(),
                generated_tokens: generated,
            });
        }
    }
    Ok(Outcome {
        finish,
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
    })
}

/// Plain greedy continuation of `ids` by `n` tokens, without a tokenizer (for model checks).
pub fn greedy_ids(model: &Bloom, ids: &[i64], n: usize) -> Result<Vec<i64>, ModelError> {
    let mut cache = KvCache::new(model.layers());
    let mut out = Vec::with_capacity(n);
    let mut logits = model.forward(ids, &mut cache)?;
    for i in 0..n {
        let t = logits.argmax(0, false).int64_value(&[]);
        out.push(t);
        if i + 1 < n {
            logits = model.forward(&[t], &mut cache)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    #[test]
    fn stop_filter_holds_back_prefixes_and_cuts_at_the_stop() {
        let stops = vec!["\nUser:".to_string()];
        let mut f = StopFilter {
            stop: &stops,
            pending: String::new(),
        };
        assert_eq!(f.push("Hello"), ("Hello".to_string(), false));
        assert_eq!(f.push(" there\nUs"), (" there".to_string(), false));
        assert_eq!(f.push("er: next"), (String::new(), true));
        let mut f = StopFilter {
            stop: &stops,
            pending: String::new(),
        };
        assert_eq!(f.push("a\nU"), ("a".to_string(), false));
        assert_eq!(f.push("nder"), ("\nUnder".to_string(), false));
    }
}
