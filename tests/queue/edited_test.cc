// Tests for filters/edit (byte edits over a message) and queue/edited (the message as
// delivered): no edits is the same bytes without a copy; one edit, several, at the start
// and the end, zero-length inserts; collisions refused in filter order; invalid lists
// detected and never read out of bounds.
#include "queue/edited.h"

#include <catch2/catch.hpp>

using moat::filters::addEdit;
using moat::filters::applyEdits;
using moat::filters::Edit;
using moat::filters::editedSize;
using moat::filters::editsCollide;
using moat::filters::editsValid;
using namespace moat::queue;

TEST_CASE("applyEdits: none, one, several, at the start and the end, inserts") {
  const std::string m = "0123456789";
  REQUIRE(applyEdits(m, {}) == m);
  REQUIRE(applyEdits(m, {{2, 3, "abc", ""}}) == "01abc56789");
  REQUIRE(applyEdits(m, {{0, 1, "X", ""}, {4, 2, "", ""}, {9, 1, "YZ", ""}}) == "X123678YZ");
  REQUIRE(applyEdits(m, {{0, 0, "<", ""}}) == "<0123456789");
  REQUIRE(applyEdits(m, {{10, 0, ">", ""}}) == "0123456789>");
  REQUIRE(applyEdits(m, {{0, 10, "all", ""}}) == "all");
  // Two inserts at one offset apply in list order; an insert at a range's edge is fine.
  REQUIRE(applyEdits(m, {{5, 0, "a", ""}, {5, 0, "b", ""}, {5, 2, "R", ""}, {7, 0, "c", ""}}) == "01234abRc789");
  std::vector<Edit> e = {{1, 2, "xyz", ""}, {5, 0, "++", ""}};
  REQUIRE(editedSize(m.size(), e) == applyEdits(m, e).size());
}

TEST_CASE("applyEdits skips an invalid edit instead of reading out of bounds") {
  const std::string m = "abcdef";
  REQUIRE(applyEdits(m, {{4, 1, "X", ""}, {2, 1, "Y", ""}}) == "abcdXf");  // out of order: second skipped
  REQUIRE(applyEdits(m, {{5, 9, "X", ""}}) == m);                          // past the end
  REQUIRE(applyEdits(m, {{7, 0, "X", ""}}) == m);
  REQUIRE_FALSE(editsValid({{4, 1, "", ""}, {2, 1, "", ""}}, 6));
  REQUIRE_FALSE(editsValid({{1, 3, "", ""}, {2, 0, "", ""}}, 6));  // insert inside a range
  REQUIRE_FALSE(editsValid({{5, 2, "", ""}}, 6));
  REQUIRE(editsValid({{0, 0, "", ""}, {0, 2, "", ""}, {2, 0, "", ""}, {6, 0, "", ""}}, 6));
}

TEST_CASE("addEdit keeps the list sorted and refuses collisions: the first filter's edit wins") {
  std::vector<Edit> list;
  REQUIRE(addEdit(list, {10, 5, "strip", "a"}, 100));
  REQUIRE(addEdit(list, {2, 0, "prefix", "b"}, 100));
  REQUIRE_FALSE(addEdit(list, {12, 10, "late", "c"}, 100));  // overlaps [10,15)
  REQUIRE_FALSE(addEdit(list, {12, 0, "inside", "d"}, 100));  // insert strictly inside
  REQUIRE_FALSE(addEdit(list, {99, 2, "past", "e"}, 100));    // past the end
  REQUIRE(addEdit(list, {15, 0, "edge", "f"}, 100));
  REQUIRE(addEdit(list, {2, 0, "second", "g"}, 100));  // same offset: after the first
  REQUIRE(list.size() == 4);
  REQUIRE(list[0].why == "b");
  REQUIRE(list[1].why == "g");
  REQUIRE(list[2].why == "a");
  REQUIRE(list[3].why == "f");
  REQUIRE(editsValid(list, 100));
  REQUIRE(editsCollide({0, 4, "", ""}, {3, 4, "", ""}));
  REQUIRE_FALSE(editsCollide({0, 4, "", ""}, {4, 4, "", ""}));
}

TEST_CASE("deliveredData: no edits returns the same data, edits give the rewritten bytes") {
  auto data = MessageData::fromMemory("Subject: hi\r\n\r\nbody\r\n");
  auto same = deliveredData(data, {});
  REQUIRE(same.get() == data.get());  // zero-cost path: no copy
  auto edited = deliveredData(data, {{9, 0, "[SPAM] ", "prefix"}});
  REQUIRE(edited->bytes() == "Subject: [SPAM] hi\r\n\r\nbody\r\n");
  REQUIRE(edited->size() == edited->bytes().size());
  REQUIRE(data->bytes() == "Subject: hi\r\n\r\nbody\r\n");  // the original is untouched
  REQUIRE(deliveredData(nullptr, {{0, 0, "x", ""}}) == nullptr);
}
