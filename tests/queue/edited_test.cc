// Tests for filters/edit (byte edits over a message) and queue/edited (the message as
// delivered): no edits is the same bytes without a copy; one edit, several, at the start
// and the end, zero-length inserts; collisions refused in filter order; invalid lists
// detected and never read out of bounds; edits made over an edited message (a chained
// milter's) composed into edits of the message as received.
#include "queue/edited.h"

#include <catch2/catch.hpp>
#include <random>

using moat::filters::addEdit;
using moat::filters::applyEdits;
using moat::filters::composeEdits;
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

namespace {

// composeEdits' promise: valid edits of the message that give what the later edits give
// over the edited message.
void checkComposed(const std::string& m, const std::vector<Edit>& applied, const std::vector<Edit>& over) {
  REQUIRE(editsValid(applied, m.size()));
  std::string edited = applyEdits(m, applied);
  REQUIRE(editsValid(over, edited.size()));
  auto all = composeEdits(applied, edited, over);
  CHECK(editsValid(all, m.size()));
  CHECK(applyEdits(m, all) == applyEdits(edited, over));
}

}  // namespace

TEST_CASE("composeEdits: later edits in untouched text move to the message's offsets") {
  const std::string m = "0123456789";
  std::vector<Edit> applied = {{2, 2, "abcd", "first"}};  // edited: 01abcd456789
  std::string edited = applyEdits(m, applied);
  auto all = composeEdits(applied, edited, {{0, 1, "Z", "second"}, {8, 1, "Y", "second"}});
  REQUIRE(all.size() == 3);
  CHECK(all[0] == Edit{0, 1, "Z", "second"});
  CHECK(all[1] == applied[0]);
  CHECK(all[2] == Edit{6, 1, "Y", "second"});  // edited 8 is the message's 6
  CHECK(applyEdits(m, all) == "Z1abcd45Y789");
  // No earlier edits: the later ones as they are. No later ones: the earlier ones.
  CHECK(composeEdits({}, m, applied) == applied);
  CHECK(composeEdits(applied, edited, {}) == applied);
}

TEST_CASE("composeEdits: an edit of an earlier insert or replacement is merged with it") {
  const std::string m = "Subject: a\r\n\r\nbody\r\n";
  // The first inserted a field at the top and replaced the body.
  std::vector<Edit> applied = {{0, 0, "X-One: 1\r\n", "first: inserted"}, {14, 6, "new body\r\n", "first: body"}};
  std::string edited = applyEdits(m, applied);
  REQUIRE(edited == "X-One: 1\r\nSubject: a\r\n\r\nnew body\r\n");
  // The second changes the inserted field, inserts above it, and replaces the body again.
  std::vector<Edit> over = {{0, 0, "X-Two: 2\r\n", "second: inserted"},
                            {0, 10, "X-One: changed\r\n", "second: changed"},
                            {24, 10, "third body\r\n", "second: body"}};
  auto all = composeEdits(applied, edited, over);
  CHECK(editsValid(all, m.size()));
  CHECK(applyEdits(m, all) == "X-Two: 2\r\nX-One: changed\r\nSubject: a\r\n\r\nthird body\r\n");
  REQUIRE(all.size() == 2);
  CHECK(all[0].offset == 0);
  CHECK(all[0].length == 0);
  CHECK(all[0].why == "first: inserted; second: inserted; second: changed");
  CHECK(all[1].offset == 14);
  CHECK(all[1].length == 6);
  CHECK(all[1].why == "first: body; second: body");
  // Deleting a field the first inserted leaves an empty insert.
  checkComposed(m, applied, {{0, 10, "", "second: deleted"}});
  // An edit that spans earlier edits and text between them, and one at a replacement's edge.
  checkComposed(m, applied, {{5, 25, "", "span"}});
  checkComposed(m, applied, {{10, 0, "A", ""}, {24, 0, "B", ""}, {34, 0, "C", ""}});
}

TEST_CASE("composeEdits: random edits over random edits compose") {
  std::mt19937 rng(12345);
  auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n)(rng); };
  auto randomEdits = [&](uint64_t size) {
    std::vector<Edit> es;
    uint64_t at = 0;
    while (at <= size && es.size() < 6) {
      uint64_t off = at + pick(std::min<uint64_t>(size - at, 5));
      uint64_t len = pick(std::min<uint64_t>(size - off, 4));
      std::string repl(pick(3), static_cast<char>('a' + pick(25)));
      es.push_back({off, len, repl, std::to_string(es.size())});
      at = off + len + (len == 0 ? pick(1) : 0);
      if (pick(3) == 0) break;
    }
    return es;
  };
  int checked = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string m(pick(20), 'x');
    for (auto& c : m) c = static_cast<char>('0' + pick(9));
    auto applied = randomEdits(m.size());
    if (!editsValid(applied, m.size())) continue;
    std::string edited = applyEdits(m, applied);
    auto over = randomEdits(edited.size());
    if (!editsValid(over, edited.size())) continue;
    INFO("round " << round);
    checkComposed(m, applied, over);
    ++checked;
  }
  CHECK(checked > 1000);  // most rounds made valid lists
}
