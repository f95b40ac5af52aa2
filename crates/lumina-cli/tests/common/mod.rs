//! Helpers the CLI test files share.

use std::path::Path;

/// (width, height, RGB bytes, `parameters` text) of a PNG file.
pub fn read_png(path: &Path) -> (u32, u32, Vec<u8>, String) {
    decode_png(&std::fs::read(path).expect("png exists"))
}

/// (width, height, RGB bytes, `parameters` text) of PNG bytes.
pub fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, String) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let frame = reader.next_frame(&mut buf).expect("png frame");
    let text = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    buf.truncate(frame.buffer_size());
    (frame.width, frame.height, buf, text)
}
