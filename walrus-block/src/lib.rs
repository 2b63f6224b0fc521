//! exp
#![allow(missing_docs)]
use rkyv::{Archive, Serialize};
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct FrameHeader { pub marker: u8, pub flags: u8, pub batch_left: u16, pub len: u32, pub offset: u64, pub payload_crc: u32, pub header_crc: u32 }

pub fn enc(h: &FrameHeader, out: &mut [u8]) -> usize {
    let buf = rkyv::api::low::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Failure>(h, rkyv::ser::writer::Buffer::from(out), rkyv::ser::allocator::SubAllocator::empty()).unwrap();
    buf.len()
}
pub fn dec(b: &[u8]) -> Option<FrameHeader> {
    let a = rkyv::access::<ArchivedFrameHeader, rkyv::rancor::Failure>(b).ok()?;
    Some(FrameHeader { marker: a.marker, flags: a.flags, batch_left: a.batch_left.to_native(), len: a.len.to_native(), offset: a.offset.to_native(), payload_crc: a.payload_crc.to_native(), header_crc: a.header_crc.to_native()})
}
#[test]
fn t() {
    assert_eq!(std::mem::size_of::<ArchivedFrameHeader>(), 24);
    assert_eq!(std::mem::align_of::<ArchivedFrameHeader>(), 1);
    let h = FrameHeader { marker: 0x57, flags: 1, batch_left: 2, len: 0x01020304, offset: 7, payload_crc: 9, header_crc: 10 };
    let mut out = [0u8; 64];
    let n = enc(&h, &mut out[..]);
    println!("{n} {:?}", &out[..n]);
    assert_eq!(dec(&out[1..n+1]).is_some(), false);
    assert_eq!(dec(&out[..n]), Some(h));
    assert!(dec(&out[..n+1]).is_none());
}
