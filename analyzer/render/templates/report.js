// Sorts a table.sortable by the clicked column (again: the other way). A cell's data-v, when
// present, is its sort value (numbers compare as numbers); else its text. The default order is
// the page's: connections needing attention first.
(function () {
  function sortBy(table, th, col) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    function value(row) {
      var cell = row.cells[col];
      return cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
    }
    rows.sort(function (a, b) {
      var x = value(a), y = value(b), nx = parseFloat(x), ny = parseFloat(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return dir * c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortBy(table, th, col); });
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(table, th, col); } });
    });
    table.setAttribute("data-sortable", "ready");
  });
})();
