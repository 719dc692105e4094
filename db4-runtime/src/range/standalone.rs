//! placeholder
/// x
pub struct RangeIndex;
/// x
pub struct RangePage;
/// x
pub struct RangeQuery;
