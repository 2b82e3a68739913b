//! Strings as parsers of outside data meet them.
//!
//! Most strings are built from one random `u64` and a length, not from a strategy per
//! character: in a debug build proptest's per-character value trees cost about a
//! millisecond per long string, which would make thousands of cases per parser too slow
//! for every `cargo test`. Shrinking still works on the length (and on the seed).

use proptest::prelude::*;
use proptest::sample::{Index, select};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Characters that break code assuming one byte per character or simple case mapping:
/// 2-, 3- and 4-byte UTF-8, a combining mark, a zero-width space, letters whose Unicode
/// lowercase differs in length (`İ`) or is ASCII (Kelvin sign, long s), NUL and controls.
pub const TRICKY: &[char] = &[
    'é', 'ß', '€', '𝄞', '😀', '\u{301}', '\u{200b}', 'İ', 'K', 'ſ', '\0', '\n', '\r', '\t',
    '\u{7f}', '\u{2028}', '"', '\\',
];

/// A small deterministic generator (splitmix64) that turns one seed into many choices.
#[derive(Debug, Clone)]
pub struct Bits(u64);

impl Bits {
    pub fn new(seed: u64) -> Bits {
        Bits(seed)
    }

    pub fn word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.word() % n as u64) as usize
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// `len` characters, each made by `make`.
fn build(bits: &mut Bits, len: usize, make: impl Fn(&mut Bits) -> char) -> String {
    (0..len).map(|_| make(bits)).collect()
}

/// `len` printable ASCII characters.
pub fn ascii_from(bits: &mut Bits, len: usize) -> String {
    build(bits, len, |b| char::from(b' ' + (b.below(95) as u8)))
}

/// `len` Unicode scalar values of any plane (surrogates become U+FFFD).
pub fn unicode_from(bits: &mut Bits, len: usize) -> String {
    build(bits, len, any_char)
}

fn any_char(bits: &mut Bits) -> char {
    char::from_u32((bits.word() % 0x11_0000) as u32).unwrap_or('\u{fffd}')
}

/// `len` characters, half of them lowercase ASCII letters and half [`TRICKY`].
pub fn long_from(bits: &mut Bits, len: usize) -> String {
    build(bits, len, |b| {
        if b.word() & 1 == 0 {
            char::from(b'a' + (b.below(26) as u8))
        } else {
            b.pick(TRICKY)
        }
    })
}

/// `ascii` letters, then `n` times one [`TRICKY`] character: every byte offset near the
/// usual cut points (60, 64, ...) falls inside a multi-byte character for some inputs.
pub fn boundary(ascii: usize, c: char, n: usize) -> String {
    format!("{}{}", "a".repeat(ascii), c.to_string().repeat(n))
}

/// Any of the kinds of [`string`], chosen and sized by `bits`.
pub fn string_from(bits: &mut Bits) -> String {
    match bits.below(5) {
        0 => {
            let len = bits.below(25);
            ascii_from(bits, len)
        }
        1 => {
            let len = bits.below(25);
            unicode_from(bits, len)
        }
        2 => {
            let len = bits.below(300);
            long_from(bits, len)
        }
        3 => {
            let (ascii, c, n) = (bits.below(80), bits.pick(TRICKY), 1 + bits.below(7));
            boundary(ascii, c, n)
        }
        _ => address_from(bits),
    }
}

/// Any string: empty, printable ASCII, any Unicode, long runs of [`TRICKY`] characters,
/// [`boundary`] text, and [`address`]-like text. Lengths shrink towards 0.
pub fn string() -> BoxedStrategy<String> {
    let seeded = |len: std::ops::Range<usize>, make: fn(&mut Bits, usize) -> String| {
        (any::<u64>(), len).prop_map(move |(seed, len)| make(&mut Bits::new(seed), len))
    };
    prop_oneof![
        seeded(0..25, ascii_from),
        seeded(0..25, unicode_from),
        seeded(0..300, long_from),
        (0..80usize, select(TRICKY), 1..8usize).prop_map(|(a, c, n)| boundary(a, c, n)),
        address(),
    ]
    .boxed()
}

/// Any bytes, 0..256 of them (not necessarily UTF-8).
pub fn bytes() -> BoxedStrategy<Vec<u8>> {
    (any::<u64>(), 0..256usize)
        .prop_map(|(seed, len)| {
            let mut bits = Bits::new(seed);
            (0..len).map(|_| bits.word() as u8).collect()
        })
        .boxed()
}

/// A word from `words` with each letter's case chosen at random, for parsers that match
/// keys case-insensitively (as Go's `encoding/json` does).
pub fn any_case(words: &'static [&'static str]) -> BoxedStrategy<String> {
    (select(words), any::<u64>())
        .prop_map(|(word, bits)| recase(word, bits))
        .boxed()
}

/// `word` with the case of its ASCII letters set by the bits of `bits`.
pub fn recase(word: &str, bits: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if (bits >> (i % 64)) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// An IP address in text: any IPv4 or IPv6 address, the cluster ranges the tests use
/// (`10.244.x.y`, `fd10::...`), IPv4-mapped IPv6, and near misses (octets out of range or
/// with leading zeros, too few or too many of them, zones, upper-case hex).
pub fn ip_from(bits: &mut Bits) -> String {
    let n = u128::from(bits.word()) << 64 | u128::from(bits.word());
    match bits.below(7) {
        0 => Ipv4Addr::from(n as u32).to_string(),
        1 => Ipv6Addr::from(n).to_string(),
        2 => format!("10.244.{}.{}", n as u8, (n >> 8) as u8),
        3 => format!("fd10:0:0:{:x}::{:x}", n as u16, (n >> 16) as u8),
        4 => format!("::ffff:{}", Ipv4Addr::from(n as u32)),
        5 => {
            let parts = 2 + bits.below(4);
            let octets: Vec<String> = (0..parts)
                .map(|_| {
                    let width = bits.below(5);
                    format!("{:0width$}", bits.below(1000))
                })
                .collect();
            octets.join(".")
        }
        _ => format!("FE80::{:X}%eth{}", n as u16, bits.below(3)),
    }
}

/// Address-like text: an [`ip_from`], alone or with a prefix length (0..=140) after `/`
/// or `-` (CIDRs and subnet-key parts), or several joined by `&`, `,` or another
/// separator (subnet keys, network lists), sometimes with stray spaces or signs.
pub fn address_from(bits: &mut Bits) -> String {
    const SEPARATORS: &[&str] = &["/", "-", "", "/+", "/ ", "--", "/0"];
    const JOINERS: &[&str] = &["&", ",", ", ", " ", "&&"];
    fn part(bits: &mut Bits) -> String {
        let ip = ip_from(bits);
        match bits.pick(SEPARATORS) {
            "" => ip,
            separator => format!("{ip}{separator}{}", bits.below(141)),
        }
    }
    if bits.below(4) > 0 {
        return part(bits);
    }
    let parts: Vec<String> = (0..1 + bits.below(3)).map(|_| part(bits)).collect();
    parts.join(bits.pick(JOINERS))
}

/// Strategy form of [`ip_from`].
pub fn ip() -> BoxedStrategy<String> {
    any::<u64>()
        .prop_map(|seed| ip_from(&mut Bits::new(seed)))
        .boxed()
}

/// Strategy form of [`address_from`].
pub fn address() -> BoxedStrategy<String> {
    any::<u64>()
        .prop_map(|seed| address_from(&mut Bits::new(seed)))
        .boxed()
}

/// One of `strings` with one change: cut after any character, one character replaced by
/// a [`TRICKY`] or any character, or one inserted.
pub fn near(strings: BoxedStrategy<String>) -> BoxedStrategy<String> {
    (strings, any::<Index>(), any::<u64>(), 0..3u8)
        .prop_map(|(text, at, seed, change)| {
            let mut bits = Bits::new(seed);
            let c = match bits.below(4) {
                0 => bits.pick(TRICKY),
                1 => bits.pick(&['-', '/', ':', '.', '&', ',', ' ', '0', 'f']),
                _ => any_char(&mut bits),
            };
            let mut chars: Vec<char> = text.chars().collect();
            let i = at.index(chars.len() + 1);
            match change {
                0 => chars.truncate(i),
                1 => {
                    if let Some(old) = chars.get_mut(i) {
                        *old = c;
                    }
                }
                _ => chars.insert(i, c),
            }
            chars.into_iter().collect()
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_deterministic_and_spread() {
        let mut a = Bits::new(7);
        let mut b = Bits::new(7);
        let first: Vec<u64> = (0..4).map(|_| a.word()).collect();
        assert_eq!(first, (0..4).map(|_| b.word()).collect::<Vec<_>>());
        let mut picks = [0u32; 4];
        for _ in 0..400 {
            picks[a.below(4)] += 1;
        }
        assert!(picks.iter().all(|n| *n > 50), "{picks:?}");
    }
}
