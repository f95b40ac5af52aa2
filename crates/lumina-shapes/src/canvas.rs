//! The canvas of version 2 of the spec: W × H pixels, x relative to W, y relative to H,
//! lengths relative to S = min(W, H), so that shapes are never stretched.

/// A canvas of `width × height` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Self { width, height }
    }

    /// A `side × side` canvas (version 1 of the spec).
    pub fn square(side: usize) -> Self {
        Self::new(side, side)
    }

    /// S = min(W, H): the unit of lengths.
    pub fn min_side(&self) -> usize {
        self.width.min(self.height)
    }

    /// One unit of S as a fraction of the width: S / W (exactly 1 on a square or a tall canvas,
    /// so version 1's arithmetic is reproduced bit for bit).
    pub fn kx(&self) -> f64 {
        if self.width == self.min_side() {
            1.0
        } else {
            self.min_side() as f64 / self.width as f64
        }
    }

    /// One unit of S as a fraction of the height: S / H.
    pub fn ky(&self) -> f64 {
        if self.height == self.min_side() {
            1.0
        } else {
            self.min_side() as f64 / self.height as f64
        }
    }

    pub fn pixels(&self) -> usize {
        self.width * self.height
    }
}

impl std::fmt::Display for Canvas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_relative_to_the_shorter_side() {
        let wide = Canvas::new(64, 32);
        assert_eq!(wide.min_side(), 32);
        assert_eq!(wide.kx(), 0.5);
        assert_eq!(wide.ky(), 1.0);
        let tall = Canvas::new(32, 96);
        assert_eq!((tall.kx(), tall.ky()), (1.0, 1.0 / 3.0));
        assert_eq!(
            (Canvas::square(48).kx(), Canvas::square(48).ky()),
            (1.0, 1.0)
        );
    }
}
