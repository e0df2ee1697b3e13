//! Audio for scenarios and studies: real recordings installed from Debian's packages
//! (`../shared/audio.md`), and synthetic audio for what the corpus lacks. 16-bit mono PCM.

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;
use std::path::{Path, PathBuf};

pub const SPEECH_DIR: &str = "/usr/share/asterisk/sounds/en_US_f_Allison";
pub const HOLD_MUSIC_DIR: &str = "/usr/share/asterisk/moh";
pub const SPEECH_16K_DIR: &str = "/usr/share/pocketsphinx/test/data";
const INSTALL_HINT: &str =
    "apt-get install -y --no-install-recommends asterisk-core-sounds-en-wav asterisk-moh-opsound-wav pocketsphinx-testdata";

#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub samples: Vec<i16>,
}

impl Audio {
    pub fn new(rate: u32, samples: Vec<i16>) -> Self {
        Self { rate, samples }
    }

    /// Little-endian PCM16 bytes, as they travel on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / self.rate as f64
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.rate as u64 * 2
    }

    pub fn append(&mut self, other: &Audio) {
        assert_eq!(self.rate, other.rate, "appending audio of another rate");
        self.samples.extend_from_slice(&other.samples);
    }

    pub fn read_wav(path: &Path) -> Result<Self> {
        let mut reader =
            hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
        let spec = reader.spec();
        if spec.bits_per_sample != 16
            || spec.channels != 1
            || spec.sample_format != hound::SampleFormat::Int
        {
            bail!("{}: not 16-bit mono PCM", path.display());
        }
        let samples = reader.samples::<i16>().collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            rate: spec.sample_rate,
            samples,
        })
    }

    pub fn write_wav(&self, path: &Path) -> Result<()> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(path, spec)?;
        for &s in &self.samples {
            w.write_sample(s)?;
        }
        w.finalize()?;
        Ok(())
    }
}

fn wav_files(dir: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| {
            format!(
                "{} is missing; install the corpus: {INSTALL_HINT}",
                d.display()
            )
        })?;
        for e in entries {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "wav") {
                files.push(p);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn read_all(dir: &str, rate: u32) -> Result<Vec<Audio>> {
    let all: Vec<Audio> = wav_files(dir)?
        .iter()
        .filter_map(|p| Audio::read_wav(p).ok())
        .filter(|a| a.rate == rate && !a.samples.is_empty())
        .collect();
    if all.is_empty() {
        bail!("no {rate} Hz 16-bit WAV under {dir}; install the corpus: {INSTALL_HINT}");
    }
    Ok(all)
}

/// Every 8 kHz prompt of the real studio speech corpus (25 min), in file-name order.
pub fn speech_corpus() -> Result<Vec<Audio>> {
    read_all(SPEECH_DIR, 8000)
}

/// The real hold-music tracks (8 kHz, 18 min).
pub fn hold_music() -> Result<Vec<Audio>> {
    read_all(HOLD_MUSIC_DIR, 8000)
}

/// Real read speech at 16 kHz (under a minute).
pub fn speech_16k() -> Result<Vec<Audio>> {
    read_all(SPEECH_16K_DIR, 16000)
}

/// Gaussian noise, Box–Muller.
fn gauss(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

fn clip(x: f64) -> i16 {
    x.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16
}

/// Telephony comfort noise: Gaussian with the given sigma (in LSB).
pub fn comfort_noise(rate: u32, seconds: f64, sigma: f64, seed: u64) -> Audio {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = (rate as f64 * seconds) as usize;
    Audio::new(
        rate,
        (0..n).map(|_| clip(gauss(&mut rng) * sigma)).collect(),
    )
}

pub fn digital_silence(rate: u32, seconds: f64) -> Audio {
    Audio::new(rate, vec![0; (rate as f64 * seconds) as usize])
}

/// A pure tone, generated digitally (so it repeats exactly when its period is whole samples).
pub fn tone(rate: u32, seconds: f64, freq: f64, amplitude: f64) -> Audio {
    let n = (rate as f64 * seconds) as usize;
    Audio::new(
        rate,
        (0..n)
            .map(|i| clip(amplitude * (2.0 * PI * freq * i as f64 / rate as f64).sin()))
            .collect(),
    )
}

/// DTMF digits: 100 ms tone pairs separated by 100 ms of digital silence.
pub fn dtmf(rate: u32, digits: &str) -> Audio {
    const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    const KEYS: [&str; 4] = ["123A", "456B", "789C", "*0#D"];
    let mut out = Audio::new(rate, Vec::new());
    for d in digits.chars() {
        let (r, c) = KEYS
            .iter()
            .enumerate()
            .find_map(|(r, row)| row.find(d).map(|c| (r, c)))
            .unwrap_or_else(|| panic!("not a DTMF digit: {d:?}"));
        let n = rate as usize / 10;
        out.samples.extend((0..n).map(|i| {
            let t = i as f64 / rate as f64;
            clip(6000.0 * ((2.0 * PI * ROWS[r] * t).sin() + (2.0 * PI * COLS[c] * t).sin()))
        }));
        out.append(&digital_silence(rate, 0.1));
    }
    out
}

/// Speech-like synthetic audio: words of voiced syllables (a random pitch with decaying
/// harmonics, jittered, plus breath noise, under a smooth envelope) separated by short gaps, and
/// pauses of comfort noise. Unique for every seed; about 60 % of it is non-silent.
pub fn speech_like(rate: u32, seconds: f64, seed: u64) -> Audio {
    let mut rng = StdRng::seed_from_u64(seed);
    let total = (rate as f64 * seconds) as usize;
    let mut s: Vec<i16> = Vec::with_capacity(total);
    while s.len() < total {
        // A word: 1-4 syllables.
        for _ in 0..rng.gen_range(1..=4) {
            let len = (rate as f64 * rng.gen_range(0.08..0.25)) as usize;
            let f0 = rng.gen_range(90.0..260.0);
            let peak = rng.gen_range(1500.0..14000.0);
            let harmonics: Vec<f64> = (1..=12)
                .map(|h| rng.gen_range(0.2..1.0) / h as f64)
                .collect();
            let mut phase = 0.0f64;
            for i in 0..len {
                let env = (PI * i as f64 / len as f64).sin().powf(0.7);
                phase += 2.0 * PI * f0 * (1.0 + 0.01 * gauss(&mut rng)) / rate as f64;
                let voiced: f64 = harmonics
                    .iter()
                    .enumerate()
                    .map(|(h, a)| a * (phase * (h + 1) as f64).sin())
                    .sum();
                s.push(clip(
                    peak * env * (0.6 * voiced + 0.08 * gauss(&mut rng)) + 8.0 * gauss(&mut rng),
                ));
            }
            s.extend(
                (0..(rate as f64 * rng.gen_range(0.01..0.06)) as usize)
                    .map(|_| clip(10.0 * gauss(&mut rng))),
            );
        }
        let pause = (rate as f64 * rng.gen_range(0.15..0.9)) as usize;
        s.extend((0..pause).map(|_| clip(10.0 * gauss(&mut rng))));
    }
    s.truncate(total);
    Audio::new(rate, s)
}

/// One call's worth of real speech: prompts of the corpus drawn at random, separated by
/// comfort-noise pauses, with light independent line noise (±2 LSB) so that two calls built from
/// the same prompts are still different bytes, as two callers' voices are.
pub fn speech_call(corpus: &[Audio], seconds: f64, seed: u64) -> Audio {
    let mut rng = StdRng::seed_from_u64(seed);
    let rate = corpus[0].rate;
    let total = (rate as f64 * seconds) as usize;
    let mut s: Vec<i16> = Vec::with_capacity(total);
    while s.len() < total {
        let prompt = &corpus[rng.gen_range(0..corpus.len())];
        s.extend(
            prompt
                .samples
                .iter()
                .map(|&x| x.saturating_add(rng.gen_range(-2..=2))),
        );
        let pause = (rate as f64 * rng.gen_range(0.2..0.8)) as usize;
        s.extend((0..pause).map(|_| clip(10.0 * gauss(&mut rng))));
    }
    s.truncate(total);
    Audio::new(rate, s)
}

/// G.711 mu-law encode then decode: what telephony audio usually went through before it became
/// PCM; it coarsens samples, so small windows repeat far more often.
pub fn mulaw_roundtrip(audio: &Audio) -> Audio {
    fn encode(x: i16) -> u8 {
        let sign = if x < 0 { 0x80u8 } else { 0 };
        let mag = (x as i32).abs().min(32635) + 0x84;
        let mut exponent = 7;
        while exponent > 0 && mag & (0x80 << exponent) == 0 {
            exponent -= 1;
        }
        let mantissa = (mag >> (exponent + 3)) & 0x0F;
        !(sign | (exponent << 4) as u8 | mantissa as u8)
    }
    fn decode(u: u8) -> i16 {
        let u = !u;
        let exponent = ((u >> 4) & 0x07) as i32;
        let mantissa = (u & 0x0F) as i32;
        let mag = (((mantissa << 3) + 0x84) << exponent) - 0x84;
        (if u & 0x80 != 0 { -mag } else { mag }) as i16
    }
    Audio::new(
        audio.rate,
        audio.samples.iter().map(|&x| decode(encode(x))).collect(),
    )
}

/// G.711 A-law encode then decode (the European telephony codec).
pub fn alaw_roundtrip(audio: &Audio) -> Audio {
    fn encode(x: i16) -> u8 {
        let (mask, mag) = if x >= 0 {
            (0xD5u8, (x >> 3) as i32)
        } else {
            (0x55u8, -((x >> 3) as i32) - 1)
        };
        let segment = (0..8).find(|&s| mag < (0x20 << s)).unwrap_or(8);
        if segment == 8 {
            return 0x7F ^ mask;
        }
        let shift = if segment < 2 { 1 } else { segment };
        (((segment << 4) | ((mag >> shift) & 0x0F)) as u8) ^ mask
    }
    fn decode(a: u8) -> i16 {
        let a = a ^ 0x55;
        let segment = (a & 0x70) >> 4;
        let mut t = ((a & 0x0F) as i32) << 4;
        t += if segment == 0 { 8 } else { 0x108 };
        if segment > 1 {
            t <<= segment - 1;
        }
        (if a & 0x80 != 0 { t } else { -t }) as i16
    }
    Audio::new(
        audio.rate,
        audio.samples.iter().map(|&x| decode(encode(x))).collect(),
    )
}

/// Peak |sample| of each `frame`-sample frame: the harness's notion of where audio is non-silent.
pub fn frame_peaks(audio: &Audio, frame: usize) -> Vec<u16> {
    audio
        .samples
        .chunks(frame)
        .map(|f| f.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_roundtrip_is_close_and_idempotent() {
        let a = speech_like(8000, 1.0, 1);
        let m = mulaw_roundtrip(&a);
        for (&x, &y) in a.samples.iter().zip(&m.samples) {
            let err = (x as i32 - y as i32).abs();
            assert!(err <= (x as i32).abs() / 16 + 8, "{x} -> {y}");
        }
        assert_eq!(mulaw_roundtrip(&m), m);
    }

    #[test]
    fn alaw_roundtrip_is_close_and_idempotent() {
        let a = speech_like(8000, 1.0, 2);
        let m = alaw_roundtrip(&a);
        for (&x, &y) in a.samples.iter().zip(&m.samples) {
            let err = (x as i32 - y as i32).abs();
            assert!(err <= (x as i32).abs() / 16 + 16, "{x} -> {y}");
        }
        assert_eq!(alaw_roundtrip(&m), m);
    }

    #[test]
    fn speech_like_has_speech_and_pauses() {
        let a = speech_like(8000, 20.0, 7);
        let peaks = frame_peaks(&a, 160);
        let loud = peaks.iter().filter(|&&p| p >= 300).count() as f64 / peaks.len() as f64;
        assert!((0.3..0.9).contains(&loud), "non-silent fraction {loud}");
    }

    #[test]
    fn dtmf_has_tone_and_gap() {
        let a = dtmf(8000, "1#");
        assert_eq!(a.samples.len(), 4 * 800);
        assert!(a.samples[..800].iter().any(|s| s.abs() > 5000));
        assert!(a.samples[800..1600].iter().all(|&s| s == 0));
    }
}
