//! BER to DER, as much as a CMS signature needs: indefinite lengths become definite,
//! long-form lengths become minimal, and constructed OCTET STRINGs (how a streaming
//! signer such as AWS's writes the content) become one primitive OCTET STRING. The
//! signature is unaffected: the content digest covers only the octets, and the signed
//! attributes are signed in their DER form. Bounded in depth; never panics on input.
//!
//! It must never recurse past `MAX_DEPTH` nor read past its input, whatever that input is.

/// Deeper than any CMS signature nests; stops recursion on hostile input.
const MAX_DEPTH: usize = 32;
const OCTET_STRING: u8 = 0x04;
const CONSTRUCTED_OCTET_STRING: u8 = 0x24;

struct Element {
    identifier: Vec<u8>,
    content: Vec<u8>,
}

pub(super) fn to_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut pos = 0;
    let top = element(input, &mut pos, 0)?;
    if pos != input.len() {
        return Err(format!(
            "{} bytes follow the ContentInfo",
            input.len() - pos
        ));
    }
    let mut out = Vec::with_capacity(input.len());
    encode(&top, &mut out);
    Ok(out)
}

fn encode(e: &Element, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.identifier);
    let len = e.content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(&e.content);
}

fn byte(input: &[u8], pos: &mut usize) -> Result<u8, String> {
    let b = *input
        .get(*pos)
        .ok_or_else(|| format!("truncated at byte {pos}"))?;
    *pos += 1;
    Ok(b)
}

fn element(input: &[u8], pos: &mut usize, depth: usize) -> Result<Element, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let start = *pos;
    let first = byte(input, pos)?;
    if first & 0x1f == 0x1f {
        // High tag number: base-128 digits, the last without bit 8.
        for _ in 0..4 {
            if byte(input, pos)? & 0x80 == 0 {
                break;
            }
        }
    }
    let identifier = input[start..*pos].to_vec();
    let constructed = first & 0x20 != 0;

    let len_byte = byte(input, pos)?;
    let length = match len_byte {
        0x80 if constructed => None,
        0x80 => {
            return Err(format!(
                "indefinite length on a primitive element at byte {start}"
            ))
        }
        l if l < 0x80 => Some(usize::from(l)),
        l => {
            let n = usize::from(l & 0x7f);
            if n > 4 {
                return Err(format!("a {n}-byte length at byte {start}"));
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(byte(input, pos)?);
            }
            Some(len)
        }
    };

    if !constructed {
        let len = length.unwrap_or(0);
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= input.len())
            .ok_or_else(|| format!("truncated element at byte {start}"))?;
        let content = input[*pos..end].to_vec();
        *pos = end;
        return Ok(Element {
            identifier,
            content,
        });
    }

    let mut children = Vec::new();
    match length {
        Some(len) => {
            let end = pos
                .checked_add(len)
                .filter(|e| *e <= input.len())
                .ok_or_else(|| format!("truncated element at byte {start}"))?;
            let inner = &input[..end];
            while *pos < end {
                if inner.get(*pos..*pos + 2) == Some(&[0u8, 0][..]) {
                    return Err(format!(
                        "end-of-contents inside a definite length at byte {pos}"
                    ));
                }
                children.push(element(inner, pos, depth + 1)?);
            }
        }
        None => loop {
            match input.get(*pos..*pos + 2) {
                Some([0, 0]) => {
                    *pos += 2;
                    break;
                }
                Some(_) => children.push(element(input, pos, depth + 1)?),
                None => {
                    return Err(format!(
                        "no end-of-contents for the element at byte {start}"
                    ))
                }
            }
        },
    }

    if identifier == [CONSTRUCTED_OCTET_STRING] {
        let mut content = Vec::new();
        for child in children {
            if child.identifier != [OCTET_STRING] {
                return Err(format!(
                    "a constructed OCTET STRING at byte {start} holds something else"
                ));
            }
            content.extend_from_slice(&child.content);
        }
        return Ok(Element {
            identifier: vec![OCTET_STRING],
            content,
        });
    }
    let mut content = Vec::new();
    for child in &children {
        encode(child, &mut content);
    }
    Ok(Element {
        identifier,
        content,
    })
}
